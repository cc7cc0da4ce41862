package mapguard.mode_test

import data.mapguard.mode

review(annotations) := {"request": {
	"kind": {"group": "", "version": "v1", "kind": "Pod"},
	"operation": "CREATE",
	"namespace": "shop",
	"object": {"metadata": {"name": "p", "annotations": annotations}, "spec": {"containers": [{"name": "app"}]}},
}}

enforced(labels) := {"shop": {"metadata": {"name": "shop", "labels": labels}}}

test_mode_injected_from_namespace_label if {
	ops := mode.patch with input as review({}) with data.kubernetes.namespaces as enforced({"mapguard.io/mode": "stop"})
	ops == {{"op": "add", "path": "/metadata/annotations/mapguard.io~1mode", "value": "stop"}}
}

test_no_injection_when_pod_sets_mode if {
	ops := mode.patch with input as review({"mapguard.io/mode": "kill"})
		with data.kubernetes.namespaces as enforced({"mapguard.io/mode": "stop"})
	count(ops) == 0
}

test_no_injection_outside_enforced_namespaces if {
	count(mode.patch) == 0 with input as review({}) with data.kubernetes.namespaces as enforced({"team": "a"})
}

test_no_injection_on_delete if {
	r := json.patch(review({}), [{"op": "replace", "path": "/request/operation", "value": "DELETE"}])
	count(mode.patch) == 0 with input as r with data.kubernetes.namespaces as enforced({"mapguard.io/mode": "stop"})
}

test_invalid_mode_denied if {
	msgs := mode.deny with input as review({"mapguard.io/mode": "explode"})
	msgs == {"annotation mapguard.io/mode has invalid value \"explode\" (expected audit, stop, kill or off)"}
}

test_opt_out_denied_in_enforced_namespace if {
	msgs := mode.deny with input as review({"mapguard.io/mode": "off"})
		with data.kubernetes.namespaces as enforced({"mapguard.io/mode": "kill"})
	count(msgs) == 1
	some msg in msgs
	contains(msg, "opting out")
}

test_opt_out_allowed_when_namespace_permits if {
	msgs := mode.deny with input as review({"mapguard.io/mode": "off"})
		with data.kubernetes.namespaces as enforced({"mapguard.io/mode": "kill", "mapguard.io/allow-opt-out": "true"})
	count(msgs) == 0
}

test_valid_modes_allowed if {
	every m in ["audit", "stop", "kill"] {
		count(mode.deny) == 0 with input as review({"mapguard.io/mode": m})
			with data.kubernetes.namespaces as enforced({"mapguard.io/mode": "audit"})
	}
}

test_weaker_mode_warned if {
	msgs := mode.warn with input as review({"mapguard.io/mode": "audit"})
		with data.kubernetes.namespaces as enforced({"mapguard.io/mode": "kill"})
	msgs == {"annotation mapguard.io/mode=audit is weaker than the namespace's mode kill"}
}

test_mode_outside_enforced_namespace_warned if {
	msgs := mode.warn with input as review({"mapguard.io/mode": "stop"})
	msgs == {"annotation mapguard.io/mode=stop has no effect: namespace shop is not enforced (no mapguard.io/mode label)"}
}

test_invalid_namespace_label_warned_not_injected if {
	msgs := mode.warn with input as review({}) with data.kubernetes.namespaces as enforced({"mapguard.io/mode": "loud"})
	count(msgs) == 1
	count(mode.patch) == 0 with input as review({}) with data.kubernetes.namespaces as enforced({"mapguard.io/mode": "loud"})
}

test_other_kinds_in_enforced_namespace_untouched if {
	r := {"request": {"kind": {"kind": "ConfigMap"}, "operation": "CREATE", "namespace": "shop", "object": {"metadata": {"name": "c"}}}}
	count(mode.patch) == 0 with input as r with data.kubernetes.namespaces as enforced({"mapguard.io/mode": "loud"})
	count(mode.warn) == 0 with input as r with data.kubernetes.namespaces as enforced({"mapguard.io/mode": "loud"})
}
