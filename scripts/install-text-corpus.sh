#!/usr/bin/env bash
# The real-text corpus the text tests and benchmarks read: Perl's standard library, the
# .pm and .pod files of Debian's perl-modules-5.xx (about 1,200 files, 17 MB of code and
# its documentation: a code corpus, like the Copilot setting of Ippolito et al.). Uses
# /usr/share/perl/5.* when perl is installed; otherwise downloads the package's .deb
# (apt-get download, no root needed) and unpacks it into .tools/text-corpus. Prints the
# directory on stdout; prints a warning and nothing else when neither works.
set -euo pipefail
cd "$(dirname "$0")/.."
for d in /usr/share/perl/5.*/ .tools/text-corpus/usr/share/perl/5.*/; do
  if [[ -f "$d/strict.pm" ]]; then
    echo "${d%/}"
    exit 0
  fi
done
pkg=$(apt-cache pkgnames perl-modules-5 2>/dev/null | sort -V | tail -1 || true)
if [[ -z "$pkg" ]]; then
  echo "warning: no perl-modules-5.* package known to apt: the real-text corpus is unavailable" >&2
  exit 0
fi
mkdir -p .tools/text-corpus/deb
(cd .tools/text-corpus/deb && apt-get download -q "$pkg" >/dev/null 2>&1) || {
  echo "warning: apt-get download $pkg failed: the real-text corpus is unavailable" >&2
  exit 0
}
dpkg-deb -x .tools/text-corpus/deb/"$pkg"_*.deb .tools/text-corpus
for d in .tools/text-corpus/usr/share/perl/5.*/; do
  echo "${d%/}"
  exit 0
done
