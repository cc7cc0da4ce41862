# No privileged containers and no sharing of the node's PID, network or IPC
# namespaces: each would let a workload see or signal other processes on the
# node, the mapguard enforcer included. Exempt namespaces are not evaluated.
#
# Rules read input.request.object directly rather than through helper rules:
# with regorus every rule-to-rule reference costs about a microsecond per
# evaluation (see policies/README.md, "Performance").
package mapguard.privileged

enforcement := "deny"

deny contains msg if {
	input.request.kind.kind == "Pod"
	some field in ["hostPID", "hostNetwork", "hostIPC"]
	input.request.object.spec[field] == true
	msg := sprintf("%s is not allowed: it shares the node's namespaces with the pod", [field])
}

deny contains msg if {
	input.request.kind.kind == "Pod"
	some field in ["containers", "initContainers", "ephemeralContainers"]
	some container in input.request.object.spec[field]
	container.securityContext.privileged == true
	msg := sprintf("container %q is privileged", [container.name])
}
