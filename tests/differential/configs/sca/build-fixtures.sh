#!/bin/sh
# Rebuilds the committed ELF fixtures of this case (sca/libscafix.so.1.2.3, sca/scafix)
# with the host's gcc; run from this directory. Stripped, without build ids.
set -eu
gcc -O2 -s -shared -fPIC -Wl,--build-id=none -Wl,-soname,libscafix.so.1 \
  -o sca/libscafix.so.1.2.3 scafix.c
ln -sf sca/libscafix.so.1.2.3 libscafix.so.1
gcc -O2 -s -Wl,--build-id=none -o sca/scafix scafix-main.c -L. -l:libscafix.so.1
rm -f libscafix.so.1
