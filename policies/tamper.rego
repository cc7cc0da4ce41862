# Nothing that would let a workload tamper with the mapguard enforcer or
# escape its uprobes: privilege escalation, capabilities that can trace
# processes or load/alter BPF programs, and host mounts of the BPF filesystem
# or kernel debug/tracing interfaces.
package mapguard.tamper

import data.mapguard.lib

enforcement := "deny"

forbidden_capabilities := {"SYS_PTRACE", "SYS_ADMIN", "BPF", "PERFMON", "SYS_MODULE", "ALL"}

forbidden_host_paths := ["/sys/fs/bpf", "/sys/kernel/debug", "/sys/kernel/tracing", "/proc", "/var/run/mapguard"]

deny contains msg if {
	some container in lib.containers
	container.securityContext.allowPrivilegeEscalation == true
	msg := sprintf("container %q sets allowPrivilegeEscalation: true", [container.name])
}

deny contains msg if {
	some container in lib.containers
	some cap in container.securityContext.capabilities.add
	name := trim_prefix(upper(cap), "CAP_")
	name in forbidden_capabilities
	msg := sprintf("container %q adds capability %s, which could tamper with the mapguard enforcer", [container.name, cap])
}

deny contains msg if {
	some volume in lib.pod.spec.volumes
	path := trim_suffix(volume.hostPath.path, "/")
	some forbidden in forbidden_host_paths
	under(path, forbidden)
	msg := sprintf("volume %q mounts host path %s, which could tamper with the mapguard enforcer", [volume.name, volume.hostPath.path])
}

under(path, prefix) if path == prefix

under(path, prefix) if startswith(path, concat("", [prefix, "/"]))

under(path, _) if path in {"", "/", "/sys", "/sys/kernel"}
