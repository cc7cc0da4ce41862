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

# An UPDATE of the Pod from annotations old to annotations new.
update(old, new) := json.patch(review(new), [
	{"op": "replace", "path": "/request/operation", "value": "UPDATE"},
	{"op": "add", "path": "/request/oldObject", "value": {"metadata": {"name": "p", "annotations": old}, "spec": {"containers": [{"name": "app"}]}}},
])

test_opt_out_denied_in_enforced_namespace if {
	msgs := mode.deny with input as review({"mapguard.io/mode": "off"})
		with data.kubernetes.namespaces as enforced({"mapguard.io/mode": "kill"})
	msgs == {"namespace shop demands mapguard mode kill (label mapguard.io/mode): annotation mapguard.io/mode=off asks for less, which needs the namespace label mapguard.io/allow-opt-out=\"true\""}
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

test_weaker_mode_denied_on_create if {
	msgs := mode.deny with input as review({"mapguard.io/mode": "audit"})
		with data.kubernetes.namespaces as enforced({"mapguard.io/mode": "kill"})
	msgs == {"namespace shop demands mapguard mode kill (label mapguard.io/mode): annotation mapguard.io/mode=audit asks for less, which needs the namespace label mapguard.io/allow-opt-out=\"true\""}
	count(mode.warn) == 0 with input as review({"mapguard.io/mode": "audit"})
		with data.kubernetes.namespaces as enforced({"mapguard.io/mode": "kill"})
}

test_every_weaker_mode_denied_every_stronger_allowed if {
	every ns_mode, ns_strength in mode.strength {
		every m, s in mode.strength {
			denied := count(mode.deny) > 0 with input as review({"mapguard.io/mode": m})
				with data.kubernetes.namespaces as enforced({"mapguard.io/mode": ns_mode})
			denied == (s < ns_strength)
		}
	}
}

test_weaker_mode_allowed_when_namespace_permits_opt_out if {
	ns := enforced({"mapguard.io/mode": "kill", "mapguard.io/allow-opt-out": "true"})
	count(mode.deny) == 0 with input as review({"mapguard.io/mode": "audit"}) with data.kubernetes.namespaces as ns
	count(mode.warn) == 0 with input as review({"mapguard.io/mode": "audit"}) with data.kubernetes.namespaces as ns
	count(mode.deny) == 0 with input as update({"mapguard.io/mode": "kill"}, {"mapguard.io/mode": "audit"})
		with data.kubernetes.namespaces as ns
}

test_update_weakening_the_mode_denied if {
	msgs := mode.deny with input as update({"mapguard.io/mode": "kill"}, {"mapguard.io/mode": "audit"})
		with data.kubernetes.namespaces as enforced({"mapguard.io/mode": "kill"})
	count(msgs) == 1
	some msg in msgs
	contains(msg, "annotation mapguard.io/mode=audit asks for less")
}

test_update_adding_a_weaker_mode_denied if {
	msgs := mode.deny with input as update({}, {"mapguard.io/mode": "off"})
		with data.kubernetes.namespaces as enforced({"mapguard.io/mode": "stop"})
	count(msgs) == 1
}

test_update_keeping_a_weaker_mode_warned_not_denied if {
	r := update({"mapguard.io/mode": "audit"}, {"mapguard.io/mode": "audit"})
	ns := enforced({"mapguard.io/mode": "kill"})
	count(mode.deny) == 0 with input as r with data.kubernetes.namespaces as ns
	msgs := mode.warn with input as r with data.kubernetes.namespaces as ns
	msgs == {"annotation mapguard.io/mode=audit is weaker than namespace shop's mode kill: the node agent enforces kill"}
}

test_update_strengthening_the_mode_allowed if {
	r := update({"mapguard.io/mode": "audit"}, {"mapguard.io/mode": "kill"})
	ns := enforced({"mapguard.io/mode": "stop"})
	count(mode.deny) == 0 with input as r with data.kubernetes.namespaces as ns
	count(mode.warn) == 0 with input as r with data.kubernetes.namespaces as ns
}

test_any_mode_allowed_without_namespace_demand if {
	every m in ["off", "audit", "stop", "kill"] {
		count(mode.deny) == 0 with input as review({"mapguard.io/mode": m})
		count(mode.warn) == 0 with input as review({"mapguard.io/mode": m})
	}
}

test_lower_coverage_denied_on_create if {
	msgs := mode.deny with input as review({"mapguard.io/coverage": "light"})
		with data.kubernetes.namespaces as enforced({"mapguard.io/mode": "kill", "mapguard.io/min-coverage": "writes"})
	msgs == {"namespace shop demands mapguard coverage writes or more (label mapguard.io/min-coverage): annotation mapguard.io/coverage=light asks for less, which needs the namespace label mapguard.io/allow-opt-out=\"true\""}
}

test_every_lower_coverage_denied_every_higher_allowed if {
	every min, min_strength in mode.coverage_strength {
		every c, s in mode.coverage_strength {
			denied := count(mode.deny) > 0 with input as review({"mapguard.io/coverage": c})
				with data.kubernetes.namespaces as enforced({"mapguard.io/min-coverage": min})
			denied == (s < min_strength)
		}
	}
}

test_coverage_order_light_sampled_writes_full if {
	mode.coverage_strength.light < mode.coverage_strength.sampled
	mode.coverage_strength.sampled < mode.coverage_strength.writes
	mode.coverage_strength.writes < mode.coverage_strength.full
}

test_lower_coverage_allowed_when_namespace_permits_opt_out if {
	ns := enforced({"mapguard.io/min-coverage": "full", "mapguard.io/allow-opt-out": "true"})
	count(mode.deny) == 0 with input as review({"mapguard.io/coverage": "light"}) with data.kubernetes.namespaces as ns
	count(mode.deny) == 0 with input as update({"mapguard.io/coverage": "full"}, {"mapguard.io/coverage": "light"})
		with data.kubernetes.namespaces as ns
}

test_update_lowering_the_coverage_denied if {
	ns := enforced({"mapguard.io/min-coverage": "sampled"})
	count(mode.deny) == 1 with input as update({"mapguard.io/coverage": "full"}, {"mapguard.io/coverage": "light"})
		with data.kubernetes.namespaces as ns
	count(mode.deny) == 1 with input as update({}, {"mapguard.io/coverage": "light"})
		with data.kubernetes.namespaces as ns
}

test_update_keeping_a_lower_coverage_warned_not_denied if {
	r := update({"mapguard.io/coverage": "light"}, {"mapguard.io/coverage": "light"})
	ns := enforced({"mapguard.io/min-coverage": "full"})
	count(mode.deny) == 0 with input as r with data.kubernetes.namespaces as ns
	msgs := mode.warn with input as r with data.kubernetes.namespaces as ns
	msgs == {"annotation mapguard.io/coverage=light is below namespace shop's minimum full: the node agent enforces full"}
}

test_invalid_min_coverage_label_warned if {
	msgs := mode.warn with input as review({"mapguard.io/coverage": "light"})
		with data.kubernetes.namespaces as enforced({"mapguard.io/min-coverage": "most"})
	msgs == {"namespace shop has an invalid mapguard.io/min-coverage label \"most\" (expected light, sampled, writes or full): no coverage demanded"}
	count(mode.deny) == 0 with input as review({"mapguard.io/coverage": "light"})
		with data.kubernetes.namespaces as enforced({"mapguard.io/min-coverage": "most"})
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
