package mapguard.gotraceback_test

import data.mapguard.gotraceback

review(env) := {"request": {
	"kind": {"group": "", "version": "v1", "kind": "Pod"},
	"operation": "CREATE",
	"namespace": "shop",
	"object": {"metadata": {"name": "p"}, "spec": {
		"containers": [{"name": "app", "env": env}],
		"initContainers": [{"name": "init", "env": [{"name": "GOTRACEBACK", "value": "all"}]}],
	}},
}}

test_gotraceback_none_warned if {
	msgs := gotraceback.warn with input as review([{"name": "GOTRACEBACK", "value": "none"}])
	msgs == {"container \"app\" sets GOTRACEBACK=none: Go crash tracebacks (e.g. concurrent map writes) would be hidden"}
}

test_gotraceback_zero_warned if {
	count(gotraceback.warn) == 1 with input as review([{"name": "GOTRACEBACK", "value": "0"}])
}

test_gotraceback_in_init_container_warned if {
	r := json.patch(review([]), [{"op": "replace", "path": "/request/object/spec/initContainers/0/env/0/value", "value": "none"}])
	msgs := gotraceback.warn with input as r
	some msg in msgs
	contains(msg, "\"init\"")
}

test_crash_hiding_godebug_warned if {
	msgs := gotraceback.warn with input as review([{"name": "GODEBUG", "value": "http2client=0, invalidptr=0"}])
	msgs == {"container \"app\" sets GODEBUG invalidptr=0: disables the runtime's invalid pointer crash"}
}

test_harmless_settings_quiet if {
	count(gotraceback.warn) == 0 with input as review([
		{"name": "GOTRACEBACK", "value": "crash"},
		{"name": "GODEBUG", "value": "http2client=0"},
		{"name": "OTHER", "value": "none"},
	])
}

test_no_deny_rule_so_never_blocks if {
	not gotraceback.deny
}
