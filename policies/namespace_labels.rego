# The mapguard.io/ labels of a Namespace say what its Pods must get
# (mapguard.io/mode, mapguard.io/min-coverage) and whether they may ask for
# less (mapguard.io/allow-opt-out). A tenant allowed to edit its own
# Namespace must not be able to lift those demands: changing, adding or
# removing any mapguard.io/ label of an existing Namespace, and creating a
# Namespace that carries one, is denied unless the requester is in one of
# the configured groups or is one of the configured users (data.mapguard_config.namespace_label_admins: the
# webhook's --label-admin-group, default system:masters, and
# --label-admin-user; the engine config file's labelAdminGroups and
# labelAdminUsers for mapguard check).
package mapguard.namespace_labels

enforcement := "deny"

label_admin if {
	some group in input.request.userInfo.groups
	group in data.mapguard_config.namespace_label_admins.groups
}

label_admin if input.request.userInfo.username in data.mapguard_config.namespace_label_admins.users

deny contains msg if {
	input.request.kind.kind == "Namespace"
	input.request.operation == "UPDATE"
	old := object.get(object.get(input.request.oldObject, "metadata", {}), "labels", {})
	new := object.get(object.get(input.request.object, "metadata", {}), "labels", {})
	some key in {k | some k, _ in old} | {k | some k, _ in new}
	startswith(key, "mapguard.io/")
	object.get(old, key, null) != object.get(new, key, null)
	not label_admin
	msg := sprintf(
		"%s may not change label %s of namespace %s (%s to %s): the mapguard.io/ labels decide what mapguard enforces on the namespace's Pods, and only the groups (%s) and users configured as their admins may change them",
		[
			input.request.userInfo.username, key, input.request.name,
			json.marshal(object.get(old, key, null)), json.marshal(object.get(new, key, null)),
			concat(", ", data.mapguard_config.namespace_label_admins.groups),
		],
	)
}

deny contains msg if {
	input.request.kind.kind == "Namespace"
	input.request.operation == "CREATE"
	labels := object.get(object.get(input.request.object, "metadata", {}), "labels", {})
	some key, value in labels
	startswith(key, "mapguard.io/")
	not label_admin
	msg := sprintf(
		"%s may not create namespace %s with label %s=%s: the mapguard.io/ labels decide what mapguard enforces on the namespace's Pods, and only the groups (%s) and users configured as their admins may set them; create it without, and ask an admin to label it",
		[
			input.request.userInfo.username, input.request.name, key, json.marshal(value),
			concat(", ", data.mapguard_config.namespace_label_admins.groups),
		],
	)
}
