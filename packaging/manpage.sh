#!/bin/sh
# Writes canopy(1) in roff from what the binary says about itself: the
# commands' --help and the configuration reference (`canopy docs`), so the man
# page can never drift from the program. Run by the build (packaging/CMakeLists.txt).
#
#   packaging/manpage.sh CANOPY_BINARY OUTPUT
set -eu
if [ $# -ne 2 ] || [ "$1" = "--help" ]; then
  sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'
  [ "${1:-}" = "--help" ] && exit 0 || exit 2
fi
canopy=$1
out=$2
version=$("$canopy" version | sed 's/^canopy //')

# Escapes text for roff: backslashes, and a leading . or ' that would read as a request.
roff() {
  sed -e 's/\\/\\e/g' -e "s/^\([.']\)/\\\\\&\1/"
}

# A verbatim block (help texts keep their alignment).
verbatim() {
  printf '.PP\n.nf\n'
  roff
  printf '.fi\n'
}

{
  printf '.TH CANOPY 1 "" "canopy %s" "User Commands"\n' "$version"
  printf '.SH NAME\ncanopy \\- the per-host collector for greenlet-correct Python profiles\n'
  printf '.SH SYNOPSIS\n.B canopy\n.I command\n[\\fIoptions\\fR]\n'
  printf '.SH DESCRIPTION\n'
  "$canopy" --help | verbatim
  printf '.SH COMMANDS\n'
  for cmd in run validate components docs task version; do
    printf '.SS canopy %s\n' "$cmd"
    if [ "$cmd" = version ]; then
      echo "Prints the version." | verbatim
    else
      "$canopy" "$cmd" --help | verbatim
    fi
  done
  for sub in create list cancel; do
    printf '.SS canopy task %s\n' "$sub"
    "$canopy" task "$sub" --help | verbatim
  done
  # The reference is Markdown: headings become sections, the rest stays verbatim.
  printf '.SH CONFIGURATION\n'
  "$canopy" docs | roff | awk '
    /^# /  { next }
    /^## / { if (open) print ".fi"; sub(/^## /, ""); print ".SS " $0; print ".nf"; open = 1; next }
    { if (!open) { print ".nf"; open = 1 } print }
    END { if (open) print ".fi" }'
  printf '.SH FILES\n'
  printf '.TP\n/etc/canopy/canopy.yaml\nthe config the canopy.service unit runs\n'
  printf '.TP\n/run/canopy/canopy.sock\nthe agents'"'"' socket (group canopy)\n'
  printf '.TP\n/var/lib/canopy\nexported files and the spool\n'
  printf '.SH SEE ALSO\n.BR systemctl (1),\n.BR journalctl (1);\n'
  printf 'deploy.md and configuration.md in the documentation directory.\n'
} >"$out.tmp"
mv "$out.tmp" "$out"
