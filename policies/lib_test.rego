package mapguard.lib_test

import data.mapguard.lib

pod_review(spec) := {"request": {
	"kind": {"group": "", "version": "v1", "kind": "Pod"},
	"operation": "CREATE",
	"namespace": "shop",
	"object": {"metadata": {"name": "p"}, "spec": spec},
}}

test_containers_include_init_and_ephemeral if {
	names := {c.name | some c in lib.containers} with input as pod_review({
		"containers": [{"name": "app"}],
		"initContainers": [{"name": "init"}],
		"ephemeralContainers": [{"name": "debug"}],
	})
	names == {"app", "init", "debug"}
}

test_no_pod_for_other_kinds if {
	not lib.pod with input as {"request": {"kind": {"kind": "ConfigMap"}, "operation": "CREATE", "object": {}}}
}

test_no_pod_on_delete if {
	not lib.pod with input as {"request": {"kind": {"kind": "Pod"}, "operation": "DELETE", "object": null}}
}

test_namespace_labels_from_data if {
	labels := lib.namespace_labels with input as pod_review({})
		with data.kubernetes.namespaces as {"shop": {"metadata": {"labels": {"team": "a"}}}}
	labels == {"team": "a"}
}

test_unknown_namespace_has_no_labels if {
	labels := lib.namespace_labels with input as pod_review({})
	labels == {}
}
