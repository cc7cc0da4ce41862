# Nothing that would let a workload tamper with the mapguard enforcer or
# escape its uprobes: privilege escalation, capabilities that can trace
# processes or load/alter BPF programs, and host mounts of the BPF filesystem,
# kernel debug/tracing interfaces, /proc or the enforcer's state directory.
package mapguard.tamper

enforcement := "deny"

forbidden_capabilities := {"SYS_PTRACE", "SYS_ADMIN", "BPF", "PERFMON", "SYS_MODULE", "ALL"}

forbidden_host_paths := ["/sys/fs/bpf", "/sys/kernel/debug", "/sys/kernel/tracing", "/proc", "/var/run/mapguard"]

deny contains msg if {
	input.request.kind.kind == "Pod"
	some field in ["containers", "initContainers", "ephemeralContainers"]
	some container in input.request.object.spec[field]
	container.securityContext.allowPrivilegeEscalation == true
	msg := sprintf("container %q sets allowPrivilegeEscalation: true", [container.name])
}

deny contains msg if {
	input.request.kind.kind == "Pod"
	some field in ["containers", "initContainers", "ephemeralContainers"]
	some container in input.request.object.spec[field]
	some cap in container.securityContext.capabilities.add
	name := trim_prefix(upper(cap), "CAP_")
	name in forbidden_capabilities
	msg := sprintf("container %q adds capability %s, which could tamper with the mapguard enforcer", [container.name, cap])
}

deny contains msg if {
	input.request.kind.kind == "Pod"
	some volume in input.request.object.spec.volumes
	path := trim_suffix(volume.hostPath.path, "/")
	some forbidden in forbidden_host_paths
	under(path, forbidden)
	msg := sprintf("volume %q mounts host path %s, which could tamper with the mapguard enforcer", [volume.name, volume.hostPath.path])
}

under(path, prefix) if path == prefix

under(path, prefix) if startswith(path, concat("", [prefix, "/"]))

# The host's root or a parent of a forbidden path exposes it too.
under(path, _) if path in {"", "/sys", "/sys/kernel", "/var", "/var/run"}
