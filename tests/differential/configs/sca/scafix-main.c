/* A tiny executable for the SCA case: needs libscafix.so.1 and libc. */
int scafix_greet(const char *who);

int main(void) { return scafix_greet("sca") < 0; }
