#!/usr/bin/env bash
# Compares the tests of a full checkout with those of a bare copy made from it
# (`scripts/new-project NAME --bare`): a bare copy must run every core test the full one runs.
#
#     scripts/compare-core-tests.sh FULL_DIR BARE_DIR
#
# Lists the tests of each (`cargo test <target> -- --list --format terse`, for the library, the
# binaries and every integration test target; doc tests are left out, their names carry line
# numbers) with one CARGO_TARGET_DIR (the one set, else FULL_DIR/target), and fails naming
#   - a test of the bare copy that the full checkout does not have;
#   - a test of the full checkout missing from the bare copy that is not the example domain's
#     (in a module below, or one of the tests below);
#   - an example-domain test below that the full checkout does not have (the list is stale) or
#     that the bare copy still has (its example-domain markers are missing).
# The bare copy's crate name is read back as the full one's in test names. Exit status: 0 when
# they match, 1 when not, 2 on a usage error or a build that fails.
set -euo pipefail

# The example domain's test modules: a path segment of each of their tests (`invoices::…` in
# tests/api, `routes::webhooks::tests::…` in the library).
domain_modules=(
    # example-domain:begin
    events
    files
    invoices
    query_plans
    stats
    webhooks
    # example-domain:end
)

# The example domain's tests in core modules, inside example-domain markers: "TARGET NAME",
# TARGET being lib, bins or an integration test target. In tests/api, the parts of core tests
# that are about invoices, split from them; in the library, the checksum of the full project's
# first migration, which a bare copy replaces.
domain_tests=(
    # example-domain:begin
    "api core::openapi_documents_the_payment_webhook_when_it_is_mounted"
    "api hardening::json_arrays_are_not_invoices_or_payment_events"
    "api hardening::one_user_cannot_hold_more_than_ten_event_streams"
    "api hardening::postgres::control_characters_are_refused_in_invoices_and_payment_events"
    "api hardening::sqlite::control_characters_are_refused_in_invoices_and_payment_events"
    "api hardening::the_openapi_document_describes_what_is_served"
    "api rate_limits::invoice_creation_is_limited_per_user"
    "lib db::migrate::tests::the_initial_migration_keeps_the_checksum_deployed_databases_have"
    # example-domain:end
)

die() {
    echo "compare-core-tests: $*" >&2
    exit 2
}

[ $# -eq 2 ] || {
    echo "usage: scripts/compare-core-tests.sh FULL_DIR BARE_DIR" >&2
    exit 2
}
[ -f "$1/Cargo.toml" ] || die "$1 is not a Cargo project"
[ -f "$2/Cargo.toml" ] || die "$2 is not a Cargo project"
full=$(cd "$1" && pwd)
bare=$(cd "$2" && pwd)
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$full/target}"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The package's name in its snake form, as it appears in Rust paths.
crate_name() {
    sed -n 's/^name *= *"\(.*\)"/\1/p' "$1/Cargo.toml" | head -n 1 | tr '-' '_'
}

# The integration test targets of a project: tests/NAME.rs and tests/NAME/main.rs.
test_targets() {
    local dir=$1 path
    for path in "$dir"/tests/*.rs "$dir"/tests/*/main.rs; do
        [ -e "$path" ] || continue
        case "$path" in
        */main.rs) basename "$(dirname "$path")" ;;
        *) basename "$path" .rs ;;
        esac
    done
}

# Every test of the project in $1 as "TARGET NAME" lines, sorted, into $2.
list_tests() {
    local dir=$1 out=$2 target
    : >"$out.unsorted"
    {
        echo "lib --lib"
        echo "bins --bins"
        for target in $( (test_targets "$full"; test_targets "$bare") | sort -u); do
            if [ -e "$dir/tests/$target.rs" ] || [ -e "$dir/tests/$target/main.rs" ]; then
                echo "$target --test $target"
            fi
        done
    } | while read -r label args; do
        # shellcheck disable=SC2086 # $args is one or two words on purpose
        if ! (cd "$dir" && cargo test --quiet $args -- --list --format terse) >"$work/list" 2>"$work/err"; then
            cat "$work/err" >&2
            die "listing the tests of $dir ($args) failed"
        fi
        sed -n "s/^\(.*\): test\$/$label \1/p" "$work/list" >>"$out.unsorted"
    done
    sort -u "$out.unsorted" >"$out"
}

# Whether a "TARGET NAME" line is an example-domain test.
is_domain() {
    local line=$1 name segment listed segments
    name=${line#* }
    for listed in ${domain_tests[@]+"${domain_tests[@]}"}; do
        [ "$listed" = "$line" ] && return 0
    done
    # Every segment of the path but the last (the test function's own name).
    IFS=':' read -r -a segments <<<"${name//::/:}"
    unset 'segments[${#segments[@]}-1]'
    for segment in ${segments[@]+"${segments[@]}"}; do
        for listed in ${domain_modules[@]+"${domain_modules[@]}"}; do
            [ "$segment" = "$listed" ] && return 0
        done
    done
    return 1
}

echo "listing the tests of $full" >&2
list_tests "$full" "$work/full"
echo "listing the tests of $bare" >&2
list_tests "$bare" "$work/bare.raw"
full_crate=$(crate_name "$full")
bare_crate=$(crate_name "$bare")
if [ -n "$bare_crate" ] && [ "$bare_crate" != "$full_crate" ]; then
    sed "s/$bare_crate/$full_crate/g" "$work/bare.raw" | sort -u >"$work/bare"
else
    cp "$work/bare.raw" "$work/bare"
fi

status=0
report() {
    local title=$1 file=$2
    if [ -s "$file" ]; then
        echo "$title:"
        sed 's/^/  /' "$file"
        status=1
    fi
}

comm -13 "$work/full" "$work/bare" >"$work/only_bare"
comm -23 "$work/full" "$work/bare" >"$work/only_full"
: >"$work/missing"
: >"$work/domain_dropped"
while IFS= read -r line; do
    if is_domain "$line"; then
        echo "$line" >>"$work/domain_dropped"
    else
        echo "$line" >>"$work/missing"
    fi
done <"$work/only_full"
: >"$work/stale"
: >"$work/domain_kept"
for listed in ${domain_tests[@]+"${domain_tests[@]}"}; do
    grep -qxF "$listed" "$work/full" || echo "$listed" >>"$work/stale"
done
while IFS= read -r line; do
    if is_domain "$line"; then
        echo "$line" >>"$work/domain_kept"
    fi
done <"$work/bare"

if [ -s "$work/domain_dropped" ]; then
    echo "left out of the bare copy as the example domain's:"
    sed 's/^/  /' "$work/domain_dropped"
fi
report "in the bare copy but not in the full checkout" "$work/only_bare"
report "in the full checkout, missing from the bare copy, and not the example domain's" "$work/missing"
report "listed as the example domain's but not in the full checkout" "$work/stale"
report "the example domain's, yet still in the bare copy" "$work/domain_kept"

echo "full: $(wc -l <"$work/full") tests; bare: $(wc -l <"$work/bare") tests;" \
    "left out of the bare copy as the example domain's: $(wc -l <"$work/domain_dropped")"
if [ "$status" -eq 0 ]; then
    echo "ok: the bare copy runs every core test of the full checkout, and no other"
fi
exit "$status"
