# Everything the one-node cluster (scripts/cluster.sh) runs, pinned here, each
# with the reason. Sourced by .ci/install-node.sh and scripts/cluster.sh.
#
# Kubernetes itself is not pinned here: kubelet, kube-controller-manager,
# kube-scheduler and kube-proxy are built from the k8s.io/kubernetes
# requirement in ../apiserver/go.mod, the same release as kube-apiserver and
# kubectl (.ci/install-cluster.sh), so the node can never be a different
# release than its control plane.

# Debian bookworm packages: "package upstream-version reason". apt installs
# bookworm's current build (security updates keep the upstream version);
# the install fails if the upstream version is not the one below, so a point
# release that moves one is noticed, not silently run.
NODE_DEBS=(
  # The CRI runtime: 1.6 is the release measured here (DESIGN.md, 2026-12-07);
  # it lacks the CRI RuntimeConfig call, and kubelet 1.37 falls back to its
  # own cgroupDriver, which is what we set. It has netns_mounts_under_state_dir,
  # which keeps Pod network namespaces inside our state folder.
  "containerd 1.6.20"
  # containerd's OCI runtime; 1.1 supports the v1 hybrid cgroups here.
  "runc 1.1.5"
  # bridge, host-local, portmap, loopback in /usr/lib/cni (CNI spec 1.0.0).
  "containernetworking-plugins 1.1.1"
  # kube-proxy --proxy-mode=iptables and the CNI plugins' rules (nf_tables backend).
  "iptables 1.8.9"
  # kube-proxy clears conntrack entries of removed Services with it.
  "conntrack 1.4.7"
  # Assembles the pause (sandbox) image and test images from scratch into OCI
  # archives: no registry is reachable here.
  "buildah 1.28.2"
  # The host side of the API server: 127.0.0.1:PORT on the host forwarded
  # into the node's network namespace.
  "socat 1.7.4.4"
)

# The sandbox image containerd starts for every Pod. Built by
# .ci/install-node.sh from tests/cluster/node/pause.c (no registry is
# reachable, so registry.k8s.io/pause cannot be pulled) and imported into
# containerd's k8s.io namespace at every `cluster-up`, under this tag, which
# is also containerd's sandbox_image. Bump the tag when pause.c changes.
PAUSE_IMAGE=localhost/mapguard/pause:1
