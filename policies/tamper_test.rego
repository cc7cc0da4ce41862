package mapguard.tamper_test

import data.mapguard.tamper

review(spec) := {"request": {
	"kind": {"group": "", "version": "v1", "kind": "Pod"},
	"operation": "CREATE",
	"namespace": "shop",
	"object": {"metadata": {"name": "p"}, "spec": spec},
}}

with_security(ctx) := review({"containers": [{"name": "app", "securityContext": ctx}]})

test_privilege_escalation_denied if {
	msgs := tamper.deny with input as with_security({"allowPrivilegeEscalation": true})
	msgs == {"container \"app\" sets allowPrivilegeEscalation: true"}
}

test_privilege_escalation_false_allowed if {
	count(tamper.deny) == 0 with input as with_security({"allowPrivilegeEscalation": false})
}

test_sys_ptrace_and_sys_admin_denied if {
	msgs := tamper.deny with input as with_security({"capabilities": {"add": ["SYS_PTRACE", "CAP_SYS_ADMIN", "NET_BIND_SERVICE"]}})
	count(msgs) == 2
}

test_bpf_capability_lower_case_denied if {
	count(tamper.deny) == 1 with input as with_security({"capabilities": {"add": ["bpf"]}})
}

test_harmless_capabilities_allowed if {
	count(tamper.deny) == 0 with input as with_security({"capabilities": {"add": ["NET_BIND_SERVICE"], "drop": ["ALL"]}})
}

test_bpf_fs_mount_denied if {
	msgs := tamper.deny with input as review({
		"containers": [{"name": "app"}],
		"volumes": [{"name": "bpf", "hostPath": {"path": "/sys/fs/bpf/"}}],
	})
	msgs == {"volume \"bpf\" mounts host path /sys/fs/bpf/, which could tamper with the mapguard enforcer"}
}

test_host_root_mount_denied if {
	count(tamper.deny) == 1 with input as review({"containers": [{"name": "app"}], "volumes": [{"name": "root", "hostPath": {"path": "/"}}]})
}

test_unrelated_host_path_allowed if {
	count(tamper.deny) == 0 with input as review({
		"containers": [{"name": "app"}],
		"volumes": [{"name": "logs", "hostPath": {"path": "/var/log"}}, {"name": "tmp", "emptyDir": {}}],
	})
}
