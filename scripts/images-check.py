#!/usr/bin/env python3
"""Checks that the images `make images` built describe what the Containerfiles
describe, and run as the manifests expect (`make images-check`, part of
`make test`).

For each image, the final stage of <name>/Containerfile (USER, ENTRYPOINT,
EXPOSE, LABEL, every COPY destination) is compared with the OCI archive
target/images/mapguard-<name>.tar: its config (User, Entrypoint,
ExposedPorts, Labels) and the files of its layers. The archive's tag must be
the one manifests/ use, and the manifests that run the image must ask for
its user or the non-root user it has a home for (runAsUser: the enforcer
image's agent runs as root, its responder as the owner of /home/nonroot)
and only ports it exposes (containerPort).

Exits 1 with one line per disagreement.

Usage: scripts/images-check.py [NAME...]   (default: webhook agent certs-gen)
  MAPGUARD_IMAGES_DIR   where the archives are (default target/images)
"""

import gzip
import io
import json
import os
import re
import shlex
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NAMES = ["webhook", "agent", "certs-gen"]


def instructions(text):
    """(INSTRUCTION, arguments) of a Containerfile, continuations joined."""
    out, cur = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not cur and (not stripped or stripped.startswith("#")):
            continue
        if cur and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            cur += stripped[:-1] + " "
            continue
        cur += stripped
        word, _, rest = cur.partition(" ")
        out.append((word.upper(), rest.strip()))
        cur = ""
    if cur:
        raise ValueError("the last instruction ends with a continuation")
    return out


def final_stage(path):
    """What the last stage of a Containerfile says about the image."""
    ins = instructions(path.read_text())
    starts = [i for i, (word, _) in enumerate(ins) if word == "FROM"]
    if not starts:
        raise ValueError(f"{path}: no FROM")
    stage = {"user": None, "entrypoint": None, "ports": set(), "labels": {}, "copies": []}
    for word, args in ins[starts[-1] + 1 :]:
        if word == "USER":
            stage["user"] = args
        elif word == "ENTRYPOINT":
            stage["entrypoint"] = json.loads(args)  # the exec (JSON) form only
        elif word == "EXPOSE":
            for port in args.split():
                stage["ports"].add(port if "/" in port else f"{port}/tcp")
        elif word == "LABEL":
            for pair in shlex.split(args):
                key, _, value = pair.partition("=")
                stage["labels"][key] = value
        elif word in ("COPY", "ADD"):
            words = [w for w in shlex.split(args) if not w.startswith("--")]
            stage["copies"].append(words[-1])
    return stage


def read_archive(path):
    """(tag, OCI config, {path: TarInfo}) of a single-image oci-archive."""
    with tarfile.open(path) as outer:

        def blob(digest):
            algo, hexdigest = digest.split(":", 1)
            return outer.extractfile(f"blobs/{algo}/{hexdigest}").read()

        index = json.loads(outer.extractfile("index.json").read())
        if len(index["manifests"]) != 1:
            raise ValueError(f"{path}: {len(index['manifests'])} manifests, expected one")
        desc = index["manifests"][0]
        tag = desc.get("annotations", {}).get("org.opencontainers.image.ref.name")
        manifest = json.loads(blob(desc["digest"]))
        config = json.loads(blob(manifest["config"]["digest"]))
        files = {}
        for layer in manifest["layers"]:
            data = blob(layer["digest"])
            if layer["mediaType"].endswith("+gzip"):
                data = gzip.decompress(data)
            with tarfile.open(fileobj=io.BytesIO(data)) as tar:
                for member in tar:
                    name = "/" + member.name.removeprefix("./").rstrip("/")
                    files[name] = member
    return tag, config, files


def manifests_naming(image):
    """Files under manifests/ that run `image` (name without the tag)."""
    found = []
    for path in sorted((ROOT / "manifests").rglob("*.yaml")):
        text = path.read_text()
        tags = set(re.findall(rf"image:\s*({re.escape(image)}:\S+)", text))
        if tags:
            found.append((path, tags, text))
    return found


def check(name, images_dir):
    problems = []
    containerfile = ROOT / name / "Containerfile"
    want = final_stage(containerfile)
    archive = images_dir / f"mapguard-{name}.tar"
    if not archive.exists():
        return [f"{archive} is missing: run make images"]
    tag, config, files = read_archive(archive)
    have = config.get("config", {})
    where = f"mapguard-{name}: {containerfile.relative_to(ROOT)} says"

    if have.get("User") != want["user"]:
        problems.append(f"{where} USER {want['user']}, the image has {have.get('User')!r}")
    if have.get("Entrypoint") != want["entrypoint"]:
        problems.append(f"{where} ENTRYPOINT {want['entrypoint']}, the image has {have.get('Entrypoint')}")
    have_ports = set(have.get("ExposedPorts") or {})
    if have_ports != want["ports"]:
        problems.append(f"{where} EXPOSE {sorted(want['ports'])}, the image exposes {sorted(have_ports)}")
    have_labels = have.get("Labels") or {}
    if have_labels != want["labels"]:
        problems.append(f"{where} LABEL {want['labels']}, the image has {have_labels}")
    for dest in want["copies"]:
        if dest.rstrip("/") and dest.rstrip("/") not in files:
            problems.append(f"{where} COPY … {dest}, the image has no {dest}")
    if want["entrypoint"]:
        program = files.get(want["entrypoint"][0])
        if program is None or not program.isfile() or not program.mode & 0o111:
            problems.append(f"mapguard-{name}: the entrypoint {want['entrypoint'][0]} is not an executable file in the image")

    # The tag and the user the manifests run it with.
    image = f"ghcr.io/mapguard/mapguard-{name}"
    uses = manifests_naming(image)
    if not uses:
        problems.append(f"mapguard-{name}: no manifest runs {image}")
    uid = (have.get("User") or "0").split(":")[0]
    users = {uid}
    home = files.get("/home/nonroot")
    if home is not None and home.isdir():
        users.add(str(home.uid))
    for path, tags, text in uses:
        rel = path.relative_to(ROOT)
        if tags != {tag}:
            problems.append(f"mapguard-{name}: {rel} runs {sorted(tags)}, the archive is tagged {tag}")
        for run_as in re.findall(r"runAsUser:\s*(\d+)", text):
            if run_as not in users:
                problems.append(f"mapguard-{name}: {rel} has runAsUser {run_as}, the image's users are {sorted(users)}")
        for port in re.findall(r"containerPort:\s*(\d+)", text):
            if f"{port}/tcp" not in have_ports:
                problems.append(f"mapguard-{name}: {rel} uses containerPort {port}, which the image does not expose")
    if not problems:
        print(
            f"mapguard-{name}: {tag} agrees with {containerfile.relative_to(ROOT)} and manifests/ "
            f"(user {have.get('User')}, entrypoint {have.get('Entrypoint')}, "
            f"ports {' '.join(sorted(have_ports)) or 'none'})"
        )
    return problems


def main():
    images_dir = Path(os.environ.get("MAPGUARD_IMAGES_DIR") or ROOT / "target" / "images")
    names = sys.argv[1:] or NAMES
    problems = []
    for name in names:
        if name not in NAMES:
            sys.exit(f"unknown image {name} (known: {' '.join(NAMES)})")
        problems += check(name, images_dir)
    for problem in problems:
        print(problem, file=sys.stderr)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
