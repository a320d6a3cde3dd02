#!/usr/bin/env bash
# Build the agent-fabric image, tagged with the git commit it was built from.
#
#   scripts/ci/build.sh                  # local build: agent-fabric:<sha> and agent-fabric:<short-sha>
#                                        # (+ agent-fabric:X.Y.Z when HEAD carries the git tag vX.Y.Z)
#   AGENT_FABRIC_IMAGE_REGISTRY=ghcr.io/bizmatters scripts/ci/build.sh
#                                        # also pushes ghcr.io/bizmatters/agent-fabric:<sha> (+ short)
#
# Environment:
#   AGENT_FABRIC_IMAGE_REGISTRY  registry/namespace to push to; unset = build only, never push
#   AGENT_FABRIC_IMAGE_NAME      repository name (default: agent-fabric)
#   AGENT_FABRIC_ALLOW_DIRTY     1 = allow pushing from a work tree with uncommitted changes
#   DOCKER                       container CLI (default: docker)
#
# Deployment is not this script's job (GitOps): put the printed image reference into
# deploy/platform/03-intelligence/agent-executor-claim.yaml and commit.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(git -C "$here" rev-parse --show-toplevel)"
docker_cli="${DOCKER:-docker}"
name="${AGENT_FABRIC_IMAGE_NAME:-agent-fabric}"
registry="${AGENT_FABRIC_IMAGE_REGISTRY:-}"

if ! sha="$(git -C "$repo_root" rev-parse --verify HEAD 2>/dev/null)"; then
  echo "build.sh: the repository has no commit yet; the image tag is the commit SHA, so commit first" >&2
  exit 1
fi
short_sha="$(git -C "$repo_root" rev-parse --short=12 HEAD)"

dirty=""
if [[ -n "$(git -C "$repo_root" status --porcelain --untracked-files=no)" ]]; then
  dirty=1
  echo "build.sh: warning: uncommitted changes; the image is not exactly commit $sha" >&2
fi

repository="$name"
if [[ -n "$registry" ]]; then
  repository="${registry%/}/$name"
  if [[ -n "$dirty" && "${AGENT_FABRIC_ALLOW_DIRTY:-}" != "1" ]]; then
    echo "build.sh: refusing to push a $sha tag built from a dirty work tree (set AGENT_FABRIC_ALLOW_DIRTY=1 to override)" >&2
    exit 1
  fi
fi

tags=("$repository:$sha" "$repository:$short_sha")
# A release commit (git tag vX.Y.Z on HEAD) is also tagged X.Y.Z, the version in pyproject.toml.
if release="$(git -C "$repo_root" describe --exact-match --tags --match 'v[0-9]*' HEAD 2>/dev/null)"; then
  tags+=("$repository:${release#v}")
fi
tag_args=()
for tag in "${tags[@]}"; do
  tag_args+=(--tag "$tag")
done

"$docker_cli" build \
  --file "$repo_root/Dockerfile" \
  --build-arg "GIT_SHA=$sha" \
  --label "org.opencontainers.image.revision=$sha" \
  "${tag_args[@]}" \
  "$repo_root"

if [[ -n "$registry" ]]; then
  for tag in "${tags[@]}"; do
    "$docker_cli" push "$tag"
  done
else
  echo "build.sh: AGENT_FABRIC_IMAGE_REGISTRY is not set; built locally, nothing pushed" >&2
fi

# The last line is the reference to deploy (machine-readable for CI).
echo "${tags[0]}"
