/* A tiny shared library for the SCA case: SONAME libscafix.so.1, needs libc. */
#include <stdio.h>

int scafix_greet(const char *who) { return printf("hello, %s\n", who); }
