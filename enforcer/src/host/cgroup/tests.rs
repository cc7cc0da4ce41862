//! `/proc/PID/cgroup` as nodes of each layout show it, and what each must
//! place. The texts are written the way the kernel prints them for the
//! names the kubelet and the runtimes create.

use super::*;

const UID: &str = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";
const UID_: &str = "0f1e2d3c_4b5a_6978_8796_a5b4c3d2e1f0";
/// A static pod's UID: the kubelet's hash of its manifest.
const STATIC_UID: &str = "6b2a3c64c8d2e5f0a1b2c3d4e5f60718";
const ID: &str = "9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b";
const OTHER_ID: &str = "1d2c3b4a5f6e7d8c9b0a1f2e3d4c5b6a7f8e9d0c1b2a3f4e5d6c7b8a9f0e1d2c";

fn container(uid: &str, qos: QosClass, runtime: Runtime, driver: Driver) -> Container {
    Container {
        pod_uid: PodUid::parse(uid).expect("test UID"),
        qos,
        id: ContainerId::parse(ID).expect("test id"),
        runtime,
        driver,
        nested: false,
    }
}

fn placed(text: &str) -> Container {
    match placement(text) {
        Placement::Container(c) => c,
        other => panic!("expected a container, got {other:?} for\n{text}"),
    }
}

fn unplaceable(text: &str) -> Unplaceable {
    match placement(text) {
        Placement::Unplaceable(u) => u,
        other => panic!("expected unplaceable, got {other:?} for\n{text}"),
    }
}

/// Every v1 controller of a typical hybrid or legacy node, each at `path`
/// except `rdma` and `misc`, which the kubelet does not manage.
fn v1_lines(path: &str) -> String {
    [
        "13:misc:/".to_string(),
        format!("12:pids:{path}"),
        format!("11:hugetlb:{path}"),
        format!("10:devices:{path}"),
        format!("9:freezer:{path}"),
        format!("8:cpu,cpuacct:{path}"),
        format!("7:perf_event:{path}"),
        "6:rdma:/".to_string(),
        format!("5:net_cls,net_prio:{path}"),
        format!("4:memory:{path}"),
        format!("3:cpuset:{path}"),
        format!("2:blkio:{path}"),
        format!("1:name=systemd:{path}"),
    ]
    .join("\n")
        + "\n"
}

#[test]
fn v2_systemd_containerd_burstable() {
    let text = format!(
        "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{ID}.scope\n"
    );
    assert_eq!(
        placed(&text),
        container(
            UID,
            QosClass::Burstable,
            Runtime::Containerd,
            Driver::Systemd
        )
    );
}

#[test]
fn v2_systemd_guaranteed_pods_sit_directly_under_kubepods() {
    let text = format!("0::/kubepods.slice/kubepods-pod{UID_}.slice/crio-{ID}.scope\n");
    assert_eq!(
        placed(&text),
        container(UID, QosClass::Guaranteed, Runtime::CriO, Driver::Systemd)
    );
}

#[test]
fn v2_systemd_besteffort_docker() {
    let text = format!(
        "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/docker-{ID}.scope\n"
    );
    assert_eq!(
        placed(&text),
        container(UID, QosClass::BestEffort, Runtime::Docker, Driver::Systemd)
    );
}

#[test]
fn static_pods_have_hash_uids() {
    let text = format!(
        "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{STATIC_UID}.slice/cri-containerd-{ID}.scope\n"
    );
    assert_eq!(placed(&text).pod_uid.as_str(), STATIC_UID);
    let text = format!("0::/kubepods/burstable/pod{STATIC_UID}/{ID}\n");
    assert_eq!(placed(&text).pod_uid.as_str(), STATIC_UID);
}

#[test]
fn crio_conmon_is_the_pods_but_not_the_container() {
    let text = format!(
        "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/crio-conmon-{ID}.scope\n"
    );
    assert_eq!(
        placement(&text),
        Placement::Monitor(container(
            UID,
            QosClass::BestEffort,
            Runtime::CriO,
            Driver::Systemd
        ))
    );
    assert_eq!(placement(&text).container(), None, "never enforced");
    let text = format!("0::/kubepods/besteffort/pod{UID}/crio-conmon-{ID}\n");
    assert!(matches!(placement(&text), Placement::Monitor(c) if c.driver == Driver::Cgroupfs));
}

#[test]
fn cgroups_a_container_makes_inside_its_own_are_the_containers() {
    let scope = format!(
        "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{ID}.scope"
    );
    // systemd as the container's init, and crun's `container` child of
    // CRI-O's scope.
    for inside in ["init.scope", "system.slice/nginx.service", "container"] {
        let c = placed(&format!("0::{scope}/{inside}\n"));
        assert!(c.nested, "{inside}");
        assert_eq!((c.id.as_str(), c.pod_uid.as_str()), (ID, UID), "{inside}");
    }
    let c = placed(&format!("0::/kubepods/pod{UID}/{ID}/init.scope\n"));
    assert!(c.nested && c.qos == QosClass::Guaranteed);
    // A container running its own kubelet belongs to the outer pod.
    let inner = format!(
        "kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-pod{}.slice/cri-containerd-{OTHER_ID}.scope",
        STATIC_UID
    );
    let c = placed(&format!("0::{scope}/{inner}\n"));
    assert_eq!((c.id.as_str(), c.pod_uid.as_str()), (ID, UID));
}

#[test]
fn v2_cgroupfs_containerd_and_crio() {
    let text = format!("0::/kubepods/burstable/pod{UID}/{ID}\n");
    assert_eq!(
        placed(&text),
        container(UID, QosClass::Burstable, Runtime::Unnamed, Driver::Cgroupfs)
    );
    let text = format!("0::/kubepods/pod{UID}/{ID}\n");
    assert_eq!(
        placed(&text),
        container(
            UID,
            QosClass::Guaranteed,
            Runtime::Unnamed,
            Driver::Cgroupfs
        )
    );
    let text = format!("0::/kubepods/besteffort/pod{UID}/crio-{ID}\n");
    assert_eq!(
        placed(&text),
        container(UID, QosClass::BestEffort, Runtime::CriO, Driver::Cgroupfs)
    );
}

#[test]
fn v1_systemd_docker_every_controller_agrees() {
    let path = format!(
        "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/docker-{ID}.scope"
    );
    assert_eq!(
        placed(&v1_lines(&path)),
        container(UID, QosClass::Burstable, Runtime::Docker, Driver::Systemd)
    );
}

#[test]
fn v1_cgroupfs_containerd_with_a_v2_line_that_shows_the_root() {
    // A hybrid node with the cgroupfs driver: the runtime joins the v1
    // controllers; systemd's v2 hierarchy still holds the process at the
    // root or in the runtime's service.
    let path = format!("/kubepods/besteffort/pod{UID}/{ID}");
    for v2 in ["0::/\n", "0::/system.slice/containerd.service\n"] {
        let text = v1_lines(&path) + v2;
        assert_eq!(
            placed(&text),
            container(
                UID,
                QosClass::BestEffort,
                Runtime::Unnamed,
                Driver::Cgroupfs
            ),
            "{v2}"
        );
    }
}

#[test]
fn hybrid_systemd_places_from_v1_and_v2_alike() {
    let path = format!(
        "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/cri-containerd-{ID}.scope"
    );
    let text = v1_lines(&path) + &format!("0::{path}\n");
    assert_eq!(
        placed(&text),
        container(
            UID,
            QosClass::BestEffort,
            Runtime::Containerd,
            Driver::Systemd
        )
    );
    // Only one v1 controller and v2 (as the tests on this machine build it).
    let text = format!("8:pids:{path}\n4:memory:/process_api/45b906b0\n1:cpu:/\n0::{path}\n");
    assert_eq!(placed(&text).id.as_str(), ID);
}

#[test]
fn the_kubelets_cgroup_root_and_a_node_in_a_container() {
    // kind: the kubelet's --cgroup-root is /kubelet, seen from the node...
    let in_node = format!(
        "0::/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{UID_}.slice/cri-containerd-{ID}.scope\n"
    );
    assert_eq!(
        placed(&in_node),
        container(
            UID,
            QosClass::BestEffort,
            Runtime::Containerd,
            Driver::Systemd
        )
    );
    // ...and from the host running the node as a Docker container.
    let from_host = in_node.replacen(
        "0::/",
        &format!("0::/system.slice/docker-{OTHER_ID}.scope/"),
        1,
    );
    assert_eq!(placed(&from_host).id.as_str(), ID);
    let text = format!("0::/kubelet/kubepods/burstable/pod{UID}/{ID}\n");
    assert_eq!(placed(&text).qos, QosClass::Burstable);
}

#[test]
fn a_reader_in_another_cgroup_namespace() {
    // An agent in a pod with its own cgroup namespace sees other pods
    // through `..`; systemd names still say where they are.
    let text = format!("0::/../../kubepods-burstable-pod{UID_}.slice/cri-containerd-{ID}.scope\n");
    assert_eq!(
        placed(&text),
        container(
            UID,
            QosClass::Burstable,
            Runtime::Containerd,
            Driver::Systemd
        )
    );
    // cgroupfs names without their root do not.
    let text = format!("0::/../../burstable/pod{UID}/{ID}\n");
    assert_eq!(unplaceable(&text).reason, Reason::OutsideCgroupNamespace);
    // Host processes seen the same way are simply outside.
    assert_eq!(
        placement("0::/../../../system.slice/containerd.service\n"),
        Placement::Outside
    );
}

#[test]
fn host_processes_and_kernel_threads_are_outside() {
    for text in [
        "0::/\n",
        "0::/init.scope\n",
        "0::/system.slice/containerd.service\n",
        "0::/system.slice/kubelet.service\n",
        "0::/user.slice/user-0.slice/session-3.scope\n",
        // A container of no pod, and crio's default parent without the kubelet.
        &format!("0::/system.slice/docker-{ID}.scope\n"),
        &format!("0::/crio/crio-{ID}\n"),
        // This machine kind (hybrid, the sandbox's memory cgroup).
        "9:name=systemd:/\n8:pids:/\n7:blkio:/\n6:freezer:/\n5:devices:/\n\
         4:memory:/process_api/45b906b00bd13aedad79dc8e7a7b230d\n3:cpuset:/\n\
         2:cpuacct:/\n1:cpu:/\n0::/\n",
        "",
    ] {
        assert_eq!(placement(text), Placement::Outside, "{text}");
    }
}

#[test]
fn unknown_runtimes_are_unplaceable_with_their_name() {
    for name in [
        format!("kata-{ID}.scope"),
        format!("libpod-{ID}.scope"),
        format!("{ID}.scope"),
        format!("sandbox-{ID}"),
    ] {
        let text = format!(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/{name}\n"
        );
        let u = unplaceable(&text);
        assert_eq!(u.reason, Reason::UnknownRuntime { name: name.clone() });
        assert_eq!(u.reason.label(), "unknown_runtime");
        assert!(u.to_string().contains(&name), "{u}");
    }
    // A systemd scope name under cgroupfs is a half match, not a guess.
    let text = format!("0::/kubepods/burstable/pod{UID}/cri-containerd-{ID}.scope\n");
    assert!(matches!(
        unplaceable(&text).reason,
        Reason::UnknownRuntime { .. }
    ));
}

#[test]
fn half_matches_are_unplaceable_with_the_reason() {
    let pod_slice =
        format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice");
    let cases: Vec<(String, Reason)> = vec![
        ("0::/kubepods.slice\n".into(), Reason::NotInContainer),
        (
            "0::/kubepods.slice/kubepods-burstable.slice\n".into(),
            Reason::NotInContainer,
        ),
        (format!("0::{pod_slice}\n"), Reason::NotInContainer),
        ("0::/kubepods/besteffort\n".into(), Reason::NotInContainer),
        (format!("0::/kubepods/pod{UID}\n"), Reason::NotInContainer),
        (
            format!("0::{pod_slice}/cri-containerd-{}.scope\n", &ID[..12]),
            Reason::BadContainerId {
                name: format!("cri-containerd-{}.scope", &ID[..12]),
            },
        ),
        (
            format!("0::/kubepods/burstable/pod1234/{ID}\n"),
            Reason::BadPodUid {
                name: "pod1234".into(),
            },
        ),
        (
            format!(
                "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID}.slice/cri-containerd-{ID}.scope\n"
            ),
            Reason::BrokenSliceChain {
                name: format!("kubepods-burstable-pod{UID}.slice"),
            },
        ),
        (
            format!("0::/kubepods/guaranteed/pod{UID}/{ID}\n"),
            Reason::UnexpectedLevel {
                name: "guaranteed".into(),
            },
        ),
        (
            format!(
                "0::/kubepods.slice/kubepods-guaranteed.slice/kubepods-guaranteed-pod{UID_}.slice/crio-{ID}.scope\n"
            ),
            Reason::UnexpectedLevel {
                name: format!("kubepods-guaranteed-pod{UID_}.slice"),
            },
        ),
        (
            format!("0::/kubepods.slice/system-burstable.slice/crio-{ID}.scope\n"),
            Reason::BrokenSliceChain {
                name: "system-burstable.slice".into(),
            },
        ),
        (
            format!("0::{pod_slice}/cri-containerd-{ID}.scope (deleted)\n"),
            Reason::Deleted,
        ),
        (
            format!("0::/kubepods-burstable-pod{UID_}.slice:cri-containerd:{ID}\n"),
            Reason::UnexpectedLevel {
                name: format!("kubepods-burstable-pod{UID_}.slice:cri-containerd:{ID}"),
            },
        ),
        (
            format!("0::/system.slice/docker-{ID}.scope/kubepods\n"),
            Reason::NotInContainer,
        ),
        ("garbage\n".into(), Reason::Malformed),
        ("x::/kubepods\n".into(), Reason::Malformed),
    ];
    for (text, reason) in cases {
        assert_eq!(unplaceable(&text).reason, reason, "{text}");
    }
}

#[test]
fn hierarchies_that_disagree_are_unplaceable() {
    let pod =
        format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice");
    let text = format!("8:pids:{pod}/crio-{OTHER_ID}.scope\n0::{pod}/crio-{ID}.scope\n");
    let u = unplaceable(&text);
    assert_eq!(
        u.path,
        format!("{pod}/crio-{ID}.scope"),
        "the v2 line comes first"
    );
    assert_eq!(
        u.reason,
        Reason::HierarchiesDisagree {
            other: format!("{pod}/crio-{OTHER_ID}.scope")
        }
    );
    // The container in one hierarchy, its conmon in another.
    let text = format!("8:pids:{pod}/crio-conmon-{ID}.scope\n0::{pod}/crio-{ID}.scope\n");
    assert!(matches!(
        unplaceable(&text).reason,
        Reason::HierarchiesDisagree { .. }
    ));
    // One hierarchy places it, another half-matches.
    let text = format!("8:pids:{pod}\n0::{pod}/crio-{ID}.scope\n");
    assert_eq!(unplaceable(&text).reason, Reason::NotInContainer);
}

#[test]
fn a_bare_id_and_a_named_runtime_agree_on_the_named_one() {
    let text = format!(
        "8:pids:/kubepods/burstable/pod{UID}/{ID}\n0::/kubepods/burstable/pod{UID}/crio-{ID}\n"
    );
    assert_eq!(placed(&text).runtime, Runtime::CriO);
    let text = format!(
        "8:pids:/kubepods/burstable/pod{UID}/{ID}\n1:cpu:/kubepods/besteffort/pod{UID}/{ID}\n"
    );
    assert!(matches!(
        unplaceable(&text).reason,
        Reason::HierarchiesDisagree { .. }
    ));
}

#[test]
fn pod_info_keeps_the_report_fields() {
    let text = format!(
        "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{ID}.scope\n"
    );
    let info = PodInfo::from_cgroup(&text);
    assert_eq!(info.pod_uid.as_deref(), Some(UID));
    assert_eq!(info.container.as_deref(), Some(ID));
    assert_eq!((info.namespace, info.pod), (None, None));

    let conmon = format!("0::/kubepods/burstable/pod{UID}/crio-conmon-{ID}\n");
    let info = PodInfo::from_cgroup(&conmon);
    assert_eq!(info.pod_uid.as_deref(), Some(UID));
    assert_eq!(info.container, None);

    let unknown = format!("0::/kubepods/burstable/pod{UID}/kata-{ID}\n");
    assert_eq!(PodInfo::from_cgroup(&unknown), PodInfo::default());
    assert_eq!(
        PodInfo::from_cgroup("0::/user.slice/user-0.slice/session-3.scope\n"),
        PodInfo::default()
    );
}

#[test]
fn this_process_is_read_from_proc() {
    let own = std::fs::read_to_string("/proc/self/cgroup").expect("/proc/self/cgroup");
    let me = std::process::id();
    assert_eq!(
        placement_of_pid(Path::new("/proc"), me).expect("own cgroup"),
        placement(&own)
    );
    assert!(placement_of_pid(Path::new("/proc"), u32::MAX).is_err());
}
