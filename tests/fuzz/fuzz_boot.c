/* libFuzzer target: every message the rendezvous accepts from the wire, through the pure
 * parsers the protocol itself uses: the 12-byte header, a HELLO as rank 0 checks it, a
 * WELCOME and the address TABLE as a rank reads them, and REFUSE/ABORT texts. The first
 * byte picks the message and the world size; the rest is the received bytes. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "pipeline/boot.h"
#include "pipeline/handshake.h"
#include "pipeline/wire.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    int kind = data[0] % 5, world = 1 + (data[0] >> 3) % 8;
    const uint8_t *pl = data + 1;
    size_t len = size - 1;
    /* an exact-size copy, so ASan sees any read past what arrived */
    uint8_t *copy = malloc(len ? len : 1);
    if (!copy)
        return 0;
    memcpy(copy, pl, len);
    switch (kind) {
    case 0: {
        int type;
        size_t n;
        if (len >= WIRE_HEADER_BYTES && wire_header_parse(copy, 1 << 20, &type, &n) == 0 && n > (1 << 20))
            abort();
        break;
    }
    case 1: {
        boot_params_t p = {.rank = 0, .size = world, .token = "job-token", .config_hash = 42, .listen_fd = -1};
        int seen[8] = {0, 1, 0, 0, 0, 0, 0, 0}, r = -1;
        void *blob = NULL;
        size_t bl = 0;
        char why[256];
        if (handshake_hello_check(&p, copy, len, seen, &r, &blob, &bl, why, sizeof why) == 0) {
            if (r <= 0 || r >= world || seen[r] || bl > BOOT_BLOB_MAX)
                abort();
            free(blob);
        }
        break;
    }
    case 2: {
        uint64_t h;
        char tok[BOOT_TOKEN_MAX + 1];
        if (handshake_welcome_parse(copy, len, &h, tok) == 0 && strlen(tok) > BOOT_TOKEN_MAX)
            abort();
        break;
    }
    case 3: {
        void *blobs[8] = {0};
        size_t lens[8] = {0};
        double clock[3];
        if (handshake_table_parse(copy, len, world, clock, blobs, lens) == 0)
            for (int q = 0; q < world; q++) {
                if (lens[q] > BOOT_BLOB_MAX)
                    abort();
                free(blobs[q]);
            }
        else
            for (int q = 0; q < 8; q++)
                if (blobs[q])
                    abort(); /* a failed parse leaves nothing allocated */
        break;
    }
    default: {
        int origin;
        char why[64];
        wire_text_parse(copy, len, &origin, why, sizeof why);
        for (const char *c = why; *c; c++)
            if ((unsigned char)*c < 0x20 || *c == 0x7f)
                abort(); /* text shown on a terminal must be printable */
        break;
    }
    }
    free(copy);
    return 0;
}
