# The runtime enforcement mode of a Pod: annotation mapguard.io/mode.
#
# * In a namespace labelled mapguard.io/mode=<mode>, Pods that do not set the
#   annotation get it injected with the namespace's mode (patch).
# * Valid modes: audit, stop, kill, off. Anything else is denied.
# * "off" in an enforced namespace is denied unless the namespace is labelled
#   mapguard.io/allow-opt-out: "true".
# * A Pod weakening the namespace's mode (kill -> audit) gets a warning, and
#   so does a Pod setting the annotation in a namespace that is not enforced
#   (it would not be watched).
package mapguard.mode

enforcement := "deny"

# Higher is stricter.
strength := {"off": 0, "audit": 1, "stop": 2, "kill": 3}

# The mode label of the request's namespace (data.kubernetes.namespaces: from
# the API server in the webhook, from --namespaces in the CI command).
# Rules spell out input/data paths instead of sharing helper rules: with
# regorus each rule-to-rule reference costs time on every evaluation.
namespace_mode := data.kubernetes.namespaces[input.request.namespace].metadata.labels["mapguard.io/mode"]

opt_out_allowed if {
	data.kubernetes.namespaces[input.request.namespace].metadata.labels["mapguard.io/allow-opt-out"] == "true"
}

patch contains op if {
	input.request.kind.kind == "Pod"
	input.request.operation in {"CREATE", "UPDATE"}
	not input.request.object.metadata.annotations["mapguard.io/mode"]
	strength[namespace_mode]
	op := {"op": "add", "path": "/metadata/annotations/mapguard.io~1mode", "value": namespace_mode}
}

deny contains msg if {
	input.request.kind.kind == "Pod"
	mode := input.request.object.metadata.annotations["mapguard.io/mode"]
	not strength[mode]
	msg := sprintf("annotation mapguard.io/mode has invalid value %q (expected audit, stop, kill or off)", [mode])
}

deny contains msg if {
	input.request.kind.kind == "Pod"
	input.request.object.metadata.annotations["mapguard.io/mode"] == "off"
	namespace_mode
	not opt_out_allowed
	msg := sprintf(
		"namespace %s is enforced by mapguard (mode %s): opting out with mapguard.io/mode=off needs the namespace label mapguard.io/allow-opt-out=\"true\"",
		[input.request.namespace, namespace_mode],
	)
}

warn contains msg if {
	input.request.kind.kind == "Pod"
	namespace_mode
	not strength[namespace_mode]
	msg := sprintf("namespace %s has an invalid mapguard.io/mode label %q: no mode injected", [input.request.namespace, namespace_mode])
}

warn contains msg if {
	input.request.kind.kind == "Pod"
	mode := input.request.object.metadata.annotations["mapguard.io/mode"]
	mode != "off"
	strength[mode] < strength[namespace_mode]
	msg := sprintf("annotation mapguard.io/mode=%s is weaker than the namespace's mode %s", [mode, namespace_mode])
}

warn contains msg if {
	input.request.kind.kind == "Pod"
	mode := input.request.object.metadata.annotations["mapguard.io/mode"]
	not namespace_mode
	msg := sprintf("annotation mapguard.io/mode=%s has no effect: namespace %s is not enforced (no mapguard.io/mode label)", [mode, input.request.namespace])
}
