# The runtime enforcement of a Pod: annotations mapguard.io/mode (the
# action) and mapguard.io/coverage (what is probed), and the minimum a
# namespace demands of them.
#
# * In a namespace labelled mapguard.io/mode=<mode>, Pods that do not set the
#   annotation get it injected with the namespace's mode (patch).
# * Valid modes: audit, stop, kill, off. Anything else is denied.
# * A namespace demands at least its mode (label mapguard.io/mode; strength
#   off < audit < stop < kill) and at least its coverage (label
#   mapguard.io/min-coverage; light < sampled < writes < full). A Pod asking
#   for less (mode off included) is denied, on CREATE and when an UPDATE
#   changes the annotation, unless the namespace is labelled
#   mapguard.io/allow-opt-out: "true". Asking for more is allowed.
# * The node agent applies the same rule from the namespace labels itself
#   (it enforces the stronger of the two), so a Pod admitted with a weaker
#   annotation while the webhook was away, or before the namespace was
#   labelled, gets the namespace's minimum anyway; an UPDATE that leaves
#   such an annotation unchanged is allowed with a warning saying so.
# * Outside namespaces that demand anything, a Pod's annotations decide
#   (the node agent follows them; without them, its --default-mode).
package mapguard.mode

enforcement := "deny"

# Higher is stricter.
strength := {"off": 0, "audit": 1, "stop": 2, "kill": 3}

# Higher probes more: light (the runtime's crash paths only) < sampled
# (every map operation in on-windows sized to a cost budget) < writes (the
# map writes, all the time) < full (every map operation, all the time).
coverage_strength := {"light": 0, "sampled": 1, "writes": 2, "full": 3}

# The labels of the request's namespace (data.kubernetes.namespaces: from
# the API server in the webhook, from --namespaces in the CI command).
# Rules spell out input/data paths instead of sharing helper rules: with
# regorus each rule-to-rule reference costs time on every evaluation.
namespace_mode := data.kubernetes.namespaces[input.request.namespace].metadata.labels["mapguard.io/mode"]

namespace_min_coverage := data.kubernetes.namespaces[input.request.namespace].metadata.labels["mapguard.io/min-coverage"]

opt_out_allowed if {
	data.kubernetes.namespaces[input.request.namespace].metadata.labels["mapguard.io/allow-opt-out"] == "true"
}

# This request sets the annotation: a CREATE, or an UPDATE that changes it.
sets_mode if input.request.operation == "CREATE"

sets_mode if {
	input.request.operation == "UPDATE"
	input.request.oldObject.metadata.annotations["mapguard.io/mode"] != input.request.object.metadata.annotations["mapguard.io/mode"]
}

sets_mode if {
	input.request.operation == "UPDATE"
	not input.request.oldObject.metadata.annotations["mapguard.io/mode"]
}

sets_coverage if input.request.operation == "CREATE"

sets_coverage if {
	input.request.operation == "UPDATE"
	input.request.oldObject.metadata.annotations["mapguard.io/coverage"] != input.request.object.metadata.annotations["mapguard.io/coverage"]
}

sets_coverage if {
	input.request.operation == "UPDATE"
	not input.request.oldObject.metadata.annotations["mapguard.io/coverage"]
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
	mode := input.request.object.metadata.annotations["mapguard.io/mode"]
	strength[mode] < strength[namespace_mode]
	not opt_out_allowed
	sets_mode
	msg := sprintf(
		"namespace %s demands mapguard mode %s (label mapguard.io/mode): annotation mapguard.io/mode=%s asks for less, which needs the namespace label mapguard.io/allow-opt-out=\"true\"",
		[input.request.namespace, namespace_mode, mode],
	)
}

deny contains msg if {
	input.request.kind.kind == "Pod"
	coverage := input.request.object.metadata.annotations["mapguard.io/coverage"]
	coverage_strength[coverage] < coverage_strength[namespace_min_coverage]
	not opt_out_allowed
	sets_coverage
	msg := sprintf(
		"namespace %s demands mapguard coverage %s or more (label mapguard.io/min-coverage): annotation mapguard.io/coverage=%s asks for less, which needs the namespace label mapguard.io/allow-opt-out=\"true\"",
		[input.request.namespace, namespace_min_coverage, coverage],
	)
}

# An UPDATE that keeps a weaker annotation the Pod already had (admitted
# before the namespace demanded more): allowed, since denying would block
# every later change of the Pod (finalizers, labels), and the node agent
# enforces the namespace's minimum whatever the annotation says.
warn contains msg if {
	input.request.kind.kind == "Pod"
	mode := input.request.object.metadata.annotations["mapguard.io/mode"]
	strength[mode] < strength[namespace_mode]
	not opt_out_allowed
	not sets_mode
	msg := sprintf(
		"annotation mapguard.io/mode=%s is weaker than namespace %s's mode %s: the node agent enforces %s",
		[mode, input.request.namespace, namespace_mode, namespace_mode],
	)
}

warn contains msg if {
	input.request.kind.kind == "Pod"
	coverage := input.request.object.metadata.annotations["mapguard.io/coverage"]
	coverage_strength[coverage] < coverage_strength[namespace_min_coverage]
	not opt_out_allowed
	not sets_coverage
	msg := sprintf(
		"annotation mapguard.io/coverage=%s is below namespace %s's minimum %s: the node agent enforces %s",
		[coverage, input.request.namespace, namespace_min_coverage, namespace_min_coverage],
	)
}

warn contains msg if {
	input.request.kind.kind == "Pod"
	namespace_mode
	not strength[namespace_mode]
	msg := sprintf("namespace %s has an invalid mapguard.io/mode label %q: no mode injected, none demanded", [input.request.namespace, namespace_mode])
}

warn contains msg if {
	input.request.kind.kind == "Pod"
	namespace_min_coverage
	not coverage_strength[namespace_min_coverage]
	msg := sprintf(
		"namespace %s has an invalid mapguard.io/min-coverage label %q (expected light, sampled, writes or full): no coverage demanded",
		[input.request.namespace, namespace_min_coverage],
	)
}
