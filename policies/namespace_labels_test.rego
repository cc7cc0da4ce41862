package mapguard.namespace_labels_test

import data.mapguard.namespace_labels

# An UPDATE of Namespace shop from labels old to labels new, by user in groups.
update(old, new, user, groups) := {"request": {
	"kind": {"group": "", "version": "v1", "kind": "Namespace"},
	"operation": "UPDATE",
	"name": "shop",
	"namespace": "shop",
	"userInfo": {"username": user, "groups": groups},
	"object": {"metadata": {"name": "shop", "labels": new}},
	"oldObject": {"metadata": {"name": "shop", "labels": old}},
}}

tenant(old, new) := update(old, new, "alice", ["tenants", "system:authenticated"])

# The engine's default settings (EngineConfig::default).
admins := {"namespace_label_admins": {"groups": ["system:masters"], "users": []}}

test_tenant_removing_the_mode_label_denied if {
	msgs := namespace_labels.deny with input as tenant({"mapguard.io/mode": "kill", "team": "a"}, {"team": "a"}) with data.mapguard_config as admins
	msgs == {"alice may not change label mapguard.io/mode of namespace shop (\"kill\" to null): the mapguard.io/ labels decide what mapguard enforces on the namespace's Pods, and only the groups (system:masters) and users configured as their admins may change them"}
}

test_tenant_weakening_the_mode_label_denied if {
	count(namespace_labels.deny) == 1 with input as tenant({"mapguard.io/mode": "kill"}, {"mapguard.io/mode": "audit"}) with data.mapguard_config as admins
}

test_tenant_adding_opt_out_denied if {
	msgs := namespace_labels.deny with input as tenant({"mapguard.io/mode": "kill"}, {"mapguard.io/mode": "kill", "mapguard.io/allow-opt-out": "true"}) with data.mapguard_config as admins
	count(msgs) == 1
	some msg in msgs
	contains(msg, "label mapguard.io/allow-opt-out of namespace shop (null to \"true\")")
}

test_tenant_changing_several_labels_gets_one_message_each if {
	r := tenant(
		{"mapguard.io/mode": "kill", "mapguard.io/min-coverage": "full"},
		{"mapguard.io/mode": "stop"},
	)
	count(namespace_labels.deny) == 2 with input as r with data.mapguard_config as admins
}

test_tenant_changing_other_labels_allowed if {
	count(namespace_labels.deny) == 0 with input as tenant({"mapguard.io/mode": "kill", "team": "a"}, {"mapguard.io/mode": "kill", "team": "b"}) with data.mapguard_config as admins
	count(namespace_labels.deny) == 0 with input as tenant({"mapguard.io/mode": "kill"}, {"mapguard.io/mode": "kill", "team": "b"}) with data.mapguard_config as admins
}

test_namespace_without_labels_handled if {
	r := json.patch(tenant({}, {}), [
		{"op": "remove", "path": "/request/object/metadata/labels"},
		{"op": "remove", "path": "/request/oldObject/metadata/labels"},
	])
	count(namespace_labels.deny) == 0 with input as r with data.mapguard_config as admins
	r2 := json.patch(tenant({}, {"mapguard.io/mode": "audit"}), [{"op": "remove", "path": "/request/oldObject/metadata/labels"}])
	count(namespace_labels.deny) == 1 with input as r2 with data.mapguard_config as admins
}

test_admin_group_may_change_the_labels if {
	r := update({"mapguard.io/mode": "kill"}, {"mapguard.io/allow-opt-out": "true"}, "admin", ["system:masters", "system:authenticated"])
	count(namespace_labels.deny) == 0 with input as r with data.mapguard_config as admins
}

test_configured_users_and_groups_may_change_the_labels if {
	r := tenant({"mapguard.io/mode": "kill"}, {})
	count(namespace_labels.deny) == 1 with input as r with data.mapguard_config as admins
	users := {"namespace_label_admins": {"groups": [], "users": ["alice"]}}
	count(namespace_labels.deny) == 0 with input as r with data.mapguard_config as users
	groups := {"namespace_label_admins": {"groups": ["tenants"], "users": []}}
	count(namespace_labels.deny) == 0 with input as r with data.mapguard_config as groups
}

test_no_admins_configured_denies_everyone if {
	r := update({"mapguard.io/mode": "kill"}, {}, "admin", ["system:masters"])
	none := {"namespace_label_admins": {"groups": [], "users": []}}
	count(namespace_labels.deny) == 1 with input as r with data.mapguard_config as none
}

# A CREATE of Namespace shop with labels, by user in groups.
create(labels, user, groups) := json.patch(update({}, labels, user, groups), [
	{"op": "replace", "path": "/request/operation", "value": "CREATE"},
	{"op": "remove", "path": "/request/oldObject"},
])

test_tenant_creating_a_namespace_with_mapguard_labels_denied if {
	msgs := namespace_labels.deny with input as create({"mapguard.io/allow-opt-out": "true", "team": "a"}, "alice", ["tenants"]) with data.mapguard_config as admins
	msgs == {"alice may not create namespace shop with label mapguard.io/allow-opt-out=\"true\": the mapguard.io/ labels decide what mapguard enforces on the namespace's Pods, and only the groups (system:masters) and users configured as their admins may set them; create it without, and ask an admin to label it"}
	count(namespace_labels.deny) == 2 with input as create({"mapguard.io/mode": "audit", "mapguard.io/min-coverage": "light"}, "alice", ["tenants"]) with data.mapguard_config as admins
}

test_creating_a_namespace_without_mapguard_labels_or_as_admin_allowed if {
	count(namespace_labels.deny) == 0 with input as create({"team": "a"}, "alice", ["tenants"]) with data.mapguard_config as admins
	count(namespace_labels.deny) == 0 with input as create({"mapguard.io/mode": "kill"}, "admin", ["system:masters"]) with data.mapguard_config as admins
	r := json.patch(create({}, "alice", ["tenants"]), [{"op": "remove", "path": "/request/object/metadata/labels"}])
	count(namespace_labels.deny) == 0 with input as r with data.mapguard_config as admins
}

test_other_kinds_not_judged if {
	pod := json.patch(tenant({"mapguard.io/mode": "kill"}, {}), [{"op": "replace", "path": "/request/kind/kind", "value": "Pod"}])
	count(namespace_labels.deny) == 0 with input as pod with data.mapguard_config as admins
}
