#!/bin/sh
# Register $MOFE_INCOMING_DIR in the registry as $MOFE_MODEL_NAME with alias $MOFE_MODEL_ALIAS,
# once per content: reruns (pod restarts, several replicas) are no-ops.
set -eu
: "${MOFE_REGISTRY:?MOFE_REGISTRY must be set}"
: "${MOFE_MODEL_NAME:?MOFE_MODEL_NAME must be set}"
: "${MOFE_INCOMING_DIR:?MOFE_INCOMING_DIR must be set}"
alias_name="${MOFE_MODEL_ALIAS:-prod}"
ref="$MOFE_MODEL_NAME@$alias_name"

if [ ! -f "$MOFE_INCOMING_DIR/config.json" ]; then
    # Nothing incoming: fine when the model is registered already (e.g. by another tool).
    if mofe registry resolve "$ref" >/dev/null 2>&1; then
        echo "no checkpoint at $MOFE_INCOMING_DIR; $ref is registered, nothing to do"
        exit 0
    fi
    echo "error: $MOFE_INCOMING_DIR/config.json not found and $ref is not registered" >&2
    exit 1
fi

mkdir -p "$MOFE_REGISTRY/.deploy"
# Fingerprint of the incoming checkpoint from names, sizes and mtimes: cheap even for
# checkpoints of hundreds of GB (the registry hashes the content itself on register).
fingerprint=$(cd "$MOFE_INCOMING_DIR" && find . -type f -printf '%P %s %T@\n' \
    | LC_ALL=C sort | sha256sum | cut -c1-16)
stamp="$MOFE_REGISTRY/.deploy/$MOFE_MODEL_NAME-$fingerprint.registered"

# Replicas starting together on a shared volume take turns.
exec 9>"$MOFE_REGISTRY/.deploy/register.lock"
flock 9

if [ -f "$stamp" ] && mofe registry resolve "$ref" >/dev/null 2>&1; then
    echo "$MOFE_INCOMING_DIR already registered as $(cat "$stamp"); $ref resolves"
    exit 0
fi

registered=$(mofe registry register "$MOFE_INCOMING_DIR" --name "$MOFE_MODEL_NAME" \
    --alias "$alias_name" | tail -n 1)
printf '%s\n' "$registered" > "$stamp.tmp"
mv "$stamp.tmp" "$stamp"
echo "registered $MOFE_INCOMING_DIR as $registered (alias $alias_name)"
