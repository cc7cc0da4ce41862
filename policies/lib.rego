# Helpers shared by the mapguard default policies.
#
# Policies are written against a Pod: for Deployments, StatefulSets,
# DaemonSets, ReplicaSets, Jobs and CronJobs the engine hands policies the Pod
# their template would create, with input.request.kind.kind == "Pod".
package mapguard.lib

# The Pod under review (undefined for other kinds and for DELETE).
pod := input.request.object if {
	input.request.kind.kind == "Pod"
	input.request.operation != "DELETE"
	is_object(input.request.object)
}

# Every container of the pod: containers, initContainers, ephemeralContainers.
containers contains container if {
	some field in ["containers", "initContainers", "ephemeralContainers"]
	some container in pod.spec[field]
}

annotations := object.get(pod, ["metadata", "annotations"], {})

namespace := input.request.namespace

# Labels of the request's namespace (data.kubernetes.namespaces, filled from
# the API server by the webhook, from --namespaces by the CI command).
namespace_labels := object.get(data, ["kubernetes", "namespaces", namespace, "metadata", "labels"], {})
