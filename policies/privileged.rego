# No privileged containers and no sharing of the node's PID, network or IPC
# namespaces: each would let a workload see or signal other processes on the
# node, the mapguard enforcer included. Exempt namespaces are not evaluated.
package mapguard.privileged

import data.mapguard.lib

enforcement := "deny"

deny contains msg if {
	some field in ["hostPID", "hostNetwork", "hostIPC"]
	lib.pod.spec[field] == true
	msg := sprintf("%s is not allowed: it shares the node's namespaces with the pod", [field])
}

deny contains msg if {
	some container in lib.containers
	container.securityContext.privileged == true
	msg := sprintf("container %q is privileged", [container.name])
}
