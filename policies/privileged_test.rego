package mapguard.privileged_test

import data.mapguard.privileged

pod_review(spec) := {"request": {
	"kind": {"group": "", "version": "v1", "kind": "Pod"},
	"operation": "CREATE",
	"namespace": "shop",
	"object": {"metadata": {"name": "p"}, "spec": spec},
}}

test_privileged_container_denied if {
	msgs := privileged.deny with input as pod_review({"containers": [{"name": "app", "securityContext": {"privileged": true}}]})
	msgs == {"container \"app\" is privileged"}
}

test_privileged_init_container_denied if {
	msgs := privileged.deny with input as pod_review({
		"containers": [{"name": "app"}],
		"initContainers": [{"name": "setup", "securityContext": {"privileged": true}}],
	})
	msgs == {"container \"setup\" is privileged"}
}

# kubectl debug --profile=sysadmin: an UPDATE of pods/ephemeralcontainers
# whose object is the whole Pod with the new container.
test_privileged_ephemeral_container_denied if {
	review := pod_review({
		"containers": [{"name": "app"}],
		"ephemeralContainers": [{"name": "debugger-x", "securityContext": {"privileged": true}}],
	})
	msgs := privileged.deny with input as object.union(review, {"request": {"operation": "UPDATE", "subResource": "ephemeralcontainers"}})
	msgs == {"container \"debugger-x\" is privileged"}
}

test_host_namespaces_denied if {
	msgs := privileged.deny with input as pod_review({"hostPID": true, "hostNetwork": true, "hostIPC": true, "containers": [{"name": "app"}]})
	count(msgs) == 3
	some msg in msgs
	startswith(msg, "hostPID is not allowed")
}

test_explicit_false_allowed if {
	msgs := privileged.deny with input as pod_review({"hostPID": false, "containers": [{"name": "app", "securityContext": {"privileged": false}}]})
	count(msgs) == 0
}

test_clean_pod_allowed if {
	count(privileged.deny) == 0 with input as pod_review({"containers": [{"name": "app", "image": "shop:1"}]})
}

test_other_kinds_ignored if {
	count(privileged.deny) == 0 with input as {"request": {"kind": {"kind": "Service"}, "operation": "CREATE", "object": {"spec": {"hostPID": true}}}}
}

test_privileged_ephemeral_container_denied if {
	msgs := privileged.deny with input as pod_review({
		"containers": [{"name": "app"}],
		"ephemeralContainers": [{"name": "debug", "securityContext": {"privileged": true}}],
	})
	msgs == {"container \"debug\" is privileged"}
}

test_delete_not_judged if {
	r := {"request": {"kind": {"kind": "Pod"}, "operation": "DELETE", "object": null, "oldObject": {"spec": {"hostPID": true}}}}
	count(privileged.deny) == 0 with input as r
}
