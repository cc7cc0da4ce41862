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

# Labels of the request's namespace (data.kubernetes.namespaces: from the
# API server in the webhook, from --namespaces in the CI command).
default namespace_labels := {}

namespace_labels := data.kubernetes.namespaces[input.request.namespace].metadata.labels

mode_key := "mapguard.io/mode"

opt_out_key := "mapguard.io/allow-opt-out"

# Higher is stricter.
strength := {"off": 0, "audit": 1, "stop": 2, "kill": 3}

namespace_mode := namespace_labels[mode_key]

pod_mode := input.request.object.metadata.annotations[mode_key] if input.request.kind.kind == "Pod"

opt_out_allowed if namespace_labels[opt_out_key] == "true"

patch contains op if {
	input.request.kind.kind == "Pod"
	input.request.operation in {"CREATE", "UPDATE"}
	strength[namespace_mode]
	not pod_mode
	op := {"op": "add", "path": "/metadata/annotations/mapguard.io~1mode", "value": namespace_mode}
}

deny contains msg if {
	pod_mode
	not strength[pod_mode]
	msg := sprintf("annotation %s has invalid value %q (expected audit, stop, kill or off)", [mode_key, pod_mode])
}

deny contains msg if {
	pod_mode == "off"
	namespace_mode
	not opt_out_allowed
	msg := sprintf(
		"namespace %s is enforced by mapguard (mode %s): opting out with %s=off needs the namespace label %s=\"true\"",
		[input.request.namespace, namespace_mode, mode_key, opt_out_key],
	)
}

warn contains msg if {
	not strength[namespace_mode]
	namespace_mode
	msg := sprintf("namespace %s has an invalid %s label %q: no mode injected", [input.request.namespace, mode_key, namespace_mode])
}

warn contains msg if {
	pod_mode != "off"
	strength[pod_mode] < strength[namespace_mode]
	msg := sprintf("annotation %s=%s is weaker than the namespace's mode %s", [mode_key, pod_mode, namespace_mode])
}

warn contains msg if {
	pod_mode
	not namespace_mode
	msg := sprintf("annotation %s=%s has no effect: namespace %s is not enforced (no %s label)", [mode_key, pod_mode, input.request.namespace, mode_key])
}
