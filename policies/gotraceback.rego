# Go crash output must stay visible: a concurrent map write makes the Go
# runtime abort with "fatal error: concurrent map writes" and a goroutine
# dump. GOTRACEBACK=none (or 0) suppresses the dump; some GODEBUG settings
# switch off the runtime's own crash checks or its consistent crash state.
# Warnings only: this policy never blocks a deployment.
package mapguard.gotraceback

enforcement := "warn"

hidden_traceback := {"none", "0"}

# GODEBUG settings that hide or weaken crashes.
hiding_godebug := {
	"invalidptr=0": "disables the runtime's invalid pointer crash",
	"cgocheck=0": "disables cgo pointer checks",
	"dontfreezetheworld=1": "lets goroutines run on during a fatal error, so the crash state is not preserved",
}

warn contains msg if {
	input.request.kind.kind == "Pod"
	some field in ["containers", "initContainers", "ephemeralContainers"]
	some container in input.request.object.spec[field]
	some env in container.env
	env.name == "GOTRACEBACK"
	lower(trim_space(env.value)) in hidden_traceback
	msg := sprintf("container %q sets GOTRACEBACK=%s: Go crash tracebacks (e.g. concurrent map writes) would be hidden", [container.name, env.value])
}

warn contains msg if {
	input.request.kind.kind == "Pod"
	some field in ["containers", "initContainers", "ephemeralContainers"]
	some container in input.request.object.spec[field]
	some env in container.env
	env.name == "GODEBUG"
	some setting in split(env.value, ",")
	reason := hiding_godebug[trim_space(setting)]
	msg := sprintf("container %q sets GODEBUG %s: %s", [container.name, trim_space(setting), reason])
}
