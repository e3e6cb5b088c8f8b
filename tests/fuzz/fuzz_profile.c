/* libFuzzer target: the network profile parsers (netem_profile_parse, netem_net_parse).
 * Whatever they accept must format back to text that parses again, so a profile a
 * results file records can always be read back. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "netem/profile.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > 4096)
        return 0;
    int hosts = 1 + data[0] % 9;
    char *text = malloc(size);
    if (!text)
        return 0;
    memcpy(text, data + 1, size - 1);
    text[size - 1] = '\0';
    char err[512], buf[256];
    netem_profile_t p;
    if (netem_profile_parse(text, &p, err, sizeof err) == 0) {
        netem_profile_t q;
        if (netem_profile_format(&p, buf, sizeof buf) >= 0 && netem_profile_parse(buf, &q, err, sizeof err) != 0)
            abort(); /* a parsed profile must format to parseable text */
        (void)netem_profile_label(&p, buf, sizeof buf);
        (void)netem_profile_is_default(&p);
    }
    netem_profile_t links[8];
    if (netem_net_parse(text, hosts, links, err, sizeof err) == 0)
        for (int i = 0; i < hosts - 1; i++)
            (void)netem_profile_format(&links[i], buf, sizeof buf);
    free(text);
    return 0;
}
