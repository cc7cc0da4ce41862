//! The identities a cgroup path carries, as validated values: a pod UID, a
//! container id, the pod's QoS class and the kubelet's cgroup driver.

use std::fmt;

/// A pod's UID as the API server reports it (`metadata.uid`).
///
/// Pods created through the API server have an RFC 4122 UUID
/// (`8-4-4-4-12` lowercase hex); static pods read from files get a UID the
/// kubelet derives by hashing the manifest (32 lowercase hex digits). The
/// systemd driver writes the UUID's dashes as `_` (a dash means a level of
/// the hierarchy in systemd unit names); the value here always has dashes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodUid(String);

impl PodUid {
    /// Parses a UID as the cgroupfs driver writes it (`pod<uid>` minus
    /// `pod`); `None` unless it is a UUID or a static pod's hash.
    pub fn parse(text: &str) -> Option<PodUid> {
        let uuid = text.len() == 36
            && text.char_indices().all(|(i, c)| match i {
                8 | 13 | 18 | 23 => c == '-',
                _ => is_lower_hex(c),
            });
        let hash = text.len() == 32 && text.chars().all(is_lower_hex);
        (uuid || hash).then(|| PodUid(text.to_string()))
    }

    /// Parses a UID as the systemd driver writes it, `_` for `-`.
    pub fn parse_systemd(text: &str) -> Option<PodUid> {
        if text.contains('-') {
            return None;
        }
        PodUid::parse(&text.replace('_', "-"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PodUid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A container's id as its runtime names it: 64 lowercase hex digits for
/// containerd, CRI-O and Docker alike. The Pod's
/// `status.containerStatuses[].containerID` is this id behind a
/// `<runtime>://` scheme.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContainerId(String);

impl ContainerId {
    pub const LEN: usize = 64;

    /// `None` unless `text` is exactly 64 lowercase hex digits.
    pub fn parse(text: &str) -> Option<ContainerId> {
        (text.len() == ContainerId::LEN && text.chars().all(is_lower_hex))
            .then(|| ContainerId(text.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ContainerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn is_lower_hex(c: char) -> bool {
    c.is_ascii_digit() || ('a'..='f').contains(&c)
}

/// The pod's QoS class, from the level of the kubelet's hierarchy the pod
/// cgroup sits in: Guaranteed pods directly under `kubepods`, the others
/// under `burstable` or `besteffort`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QosClass {
    Guaranteed,
    Burstable,
    BestEffort,
}

impl QosClass {
    /// The kubelet's name of a QoS level (`None` for Guaranteed, which has
    /// no level of its own).
    pub fn level(self) -> Option<&'static str> {
        match self {
            QosClass::Guaranteed => None,
            QosClass::Burstable => Some("burstable"),
            QosClass::BestEffort => Some("besteffort"),
        }
    }

    /// The QoS class whose level is named `name`.
    pub fn from_level(name: &str) -> Option<QosClass> {
        [QosClass::Burstable, QosClass::BestEffort]
            .into_iter()
            .find(|q| q.level() == Some(name))
    }

    /// As the Pod's `status.qosClass` spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            QosClass::Guaranteed => "Guaranteed",
            QosClass::Burstable => "Burstable",
            QosClass::BestEffort => "BestEffort",
        }
    }
}

impl fmt::Display for QosClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the kubelet (and with it the runtime) names cgroups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Driver {
    /// `kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid>.slice/<runtime>-<id>.scope`
    Systemd,
    /// `/kubepods/burstable/pod<uid>/<id>`
    Cgroupfs,
}

impl Driver {
    pub fn as_str(self) -> &'static str {
        match self {
            Driver::Systemd => "systemd",
            Driver::Cgroupfs => "cgroupfs",
        }
    }
}

impl fmt::Display for Driver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_uids_are_uuids_or_static_pod_hashes() {
        let uuid = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";
        assert_eq!(PodUid::parse(uuid).expect("uuid").as_str(), uuid);
        let hash = "6b2a3c64c8d2e5f0a1b2c3d4e5f60718";
        assert_eq!(PodUid::parse(hash).expect("static pod").as_str(), hash);
        assert_eq!(
            PodUid::parse_systemd("0f1e2d3c_4b5a_6978_8796_a5b4c3d2e1f0")
                .expect("systemd escaped")
                .as_str(),
            uuid
        );
        for bad in [
            "",
            "0F1E2D3C-4B5A-6978-8796-A5B4C3D2E1F0",
            "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f",
            "0f1e2d3c_4b5a_6978_8796_a5b4c3d2e1f0",
            "0f1e2d3c4b5a-6978-8796-a5b4c3d2e1f0-",
            "6b2a3c64c8d2e5f0a1b2c3d4e5f6071g",
        ] {
            assert_eq!(PodUid::parse(bad), None, "{bad:?} is no pod UID");
        }
        assert_eq!(
            PodUid::parse_systemd("0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"),
            None,
            "a systemd name never holds a dash inside one level"
        );
    }

    #[test]
    fn container_ids_are_64_lowercase_hex_digits() {
        let id = "9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b";
        assert_eq!(ContainerId::parse(id).expect("id").as_str(), id);
        assert_eq!(ContainerId::parse(&id[1..]), None, "63 digits");
        assert_eq!(ContainerId::parse(&id.to_uppercase()), None, "uppercase");
        assert_eq!(ContainerId::parse(&format!("{}x", &id[1..])), None);
    }

    #[test]
    fn qos_levels_round_trip() {
        for q in [QosClass::Burstable, QosClass::BestEffort] {
            assert_eq!(QosClass::from_level(q.level().expect("level")), Some(q));
        }
        assert_eq!(QosClass::Guaranteed.level(), None);
        assert_eq!(QosClass::from_level("guaranteed"), None);
        assert_eq!(QosClass::from_level("pod1234"), None);
    }
}
