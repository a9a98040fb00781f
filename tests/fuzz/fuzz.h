/*
 * Shared by the fuzz harnesses. Each harness defines LLVMFuzzerTestOneInput;
 * built with clang -fsanitize=fuzzer it is a libFuzzer target, built with
 * replay_main.c (any compiler) it replays a corpus, so every crash kept in
 * regressions/ is re-run by the normal `make test`.
 */
#ifndef CANOPY_FUZZ_H
#define CANOPY_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

/*
 * An invariant the code under test must keep. abort() rather than assert():
 * it must hold in release builds too, and libFuzzer saves the input on abort.
 */
#define FUZZ_CHECK(cond)                                                                             \
    do {                                                                                             \
        if (!(cond)) {                                                                               \
            fprintf(stderr, "%s:%d: invariant failed: %s\n", __FILE__, __LINE__, #cond);             \
            abort();                                                                                 \
        }                                                                                            \
    } while (0)

#endif
