/* The option vocabulary's contract: README's option table lists every option once, every
 * command's --help lists exactly the options the table gives it (same short letter) and
 * mentions no other, every option that takes a value states its default, no short letter
 * means two long options anywhere, and the old spellings still work with a note. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "bench/cli.h"
#include "tests/testutil.h"

#define MAX_ROWS 128

typedef struct {
    char letter;           /* 0 = none */
    char name[48];         /* without "--" */
    char cmds[160];        /* ", "-separated, or "every command" */
    int seen;              /* listed by some command's --help */
} row_t;

static row_t rows[MAX_ROWS];
static int n_rows;
static char out[1 << 16];

/* "| `-P` | `--stages P` | run, stage | ... |" -> a row; 0 if the line is no option row. */
static int parse_row(const char *line, row_t *r)
{
    memset(r, 0, sizeof *r);
    if (strncmp(line, "| ", 2))
        return 0;
    const char *cell[4];
    const char *p = line + 1;
    for (int i = 0; i < 4; i++) {
        while (*p == ' ')
            p++;
        cell[i] = p;
        p = strchr(p, '|');
        if (!p)
            return 0;
        p++;
    }
    if (cell[0][0] == '`' && cell[0][1] == '-')
        r->letter = cell[0][2];
    const char *l = strstr(cell[1], "`--");
    if (!l || l > cell[2])
        return 0;
    l += 3;
    size_t n = strcspn(l, " `");
    if (n == 0 || n >= sizeof r->name)
        return 0;
    memcpy(r->name, l, n);
    n = (size_t)(strchr(cell[2], '|') - cell[2]);
    while (n && cell[2][n - 1] == ' ')
        n--;
    if (n >= sizeof r->cmds)
        return 0;
    memcpy(r->cmds, cell[2], n);
    return 1;
}

static void read_readme(void)
{
    FILE *f = fopen("README.md", "r");
    if (!f)
        fail_msg("cannot open README.md (tests run from the repository root)");
    char line[1024];
    int in = 0;
    n_rows = 0;
    while (fgets(line, sizeof line, f)) {
        if (!strncmp(line, "## ", 3))
            in = !strncmp(line, "## Options", 10);
        row_t r;
        if (!in || !parse_row(line, &r))
            continue;
        for (int i = 0; i < n_rows; i++)
            if (!strcmp(rows[i].name, r.name))
                fail_msg("README lists --%s twice", r.name);
        if (n_rows == MAX_ROWS)
            fail_msg("README option table: more than %d rows", MAX_ROWS);
        rows[n_rows++] = r;
    }
    fclose(f);
    if (n_rows < 10)
        fail_msg("README.md has no option table under '## Options' (%d rows)", n_rows);
}

static row_t *find_row(const char *name, size_t len)
{
    for (int i = 0; i < n_rows; i++)
        if (strlen(rows[i].name) == len && !strncmp(rows[i].name, name, len))
            return &rows[i];
    return NULL;
}

static int row_has_cmd(const row_t *r, const char *cmd)
{
    if (!strcmp(r->cmds, "every command"))
        return 1;
    size_t n = strlen(cmd);
    for (const char *p = r->cmds; (p = strstr(p, cmd)); p += n)
        if ((p == r->cmds || p[-1] == ' ') && (p[n] == ',' || p[n] == '\0'))
            return 1;
    return 0;
}

/* An option line of --help: "  -x, --name ..." or "      --name ...". */
static int option_line(const char *l, char *letter, const char **name, size_t *len)
{
    if (!strncmp(l, "  -", 3) && l[3] && l[3] != '-' && !strncmp(l + 4, ", --", 4)) {
        *letter = l[3];
        *name = l + 8;
    } else if (!strncmp(l, "      --", 8)) {
        *letter = 0;
        *name = l + 8;
    } else {
        return 0;
    }
    *len = strspn(*name, "abcdefghijklmnopqrstuvwxyz-");
    return *len > 0;
}

static void check_command(const char *cmd, char letters[128][48])
{
    if (tu_pipenem_run(out, sizeof out, "%s --help", cmd) != 0)
        fail_msg("pipenem %s --help failed:\n%s", cmd, out);
    int listed[MAX_ROWS] = {0};
    /* every --word anywhere in the text is an option this command takes */
    for (const char *p = out; (p = strstr(p, "--")); p += 2) {
        size_t n = strspn(p + 2, "abcdefghijklmnopqrstuvwxyz-");
        if (!n || (p > out && p[-1] != ' ' && p[-1] != '[' && p[-1] != '(' && p[-1] != '|' && p[-1] != '`' &&
                   p[-1] != '\n'))
            continue;
        row_t *r = find_row(p + 2, n);
        if (!r || !row_has_cmd(r, cmd))
            fail_msg("pipenem %s --help mentions --%.*s, which README's table does not give to %s", cmd, (int)n,
                     p + 2, cmd);
    }
    for (char *l = out; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL) {
        char letter;
        const char *name;
        size_t len;
        if (!option_line(l, &letter, &name, &len))
            continue;
        row_t *r = find_row(name, len);
        if (!r || !row_has_cmd(r, cmd))
            fail_msg("pipenem %s --help lists --%.*s, not in README's table for %s", cmd, (int)len, name, cmd);
        if (r->letter != letter)
            fail_msg("pipenem %s: --%s has short option '%c', README says '%c'", cmd, r->name, letter ? letter : ' ',
                     r->letter ? r->letter : ' ');
        listed[r - rows] = 1;
        r->seen = 1;
        if (letter) {
            if (letters[(int)letter][0] && strcmp(letters[(int)letter], r->name))
                fail_msg("-%c is --%s in one command and --%s in %s", letter, letters[(int)letter], r->name, cmd);
            snprintf(letters[(int)letter], 48, "%s", r->name);
        }
        /* an option with a value states its default, in its own text (up to the next option) */
        const char *arg = name + len;
        if (*arg == ' ' && arg[1] != ' ') {
            const char *next = l + 1, *end;
            while ((end = strchr(next, '\n')) && !strncmp(end + 1, "                              ", 30))
                next = end + 1;
            end = end ? end : l + strlen(l);
            const char *d = strstr(l, "(default:");
            if (!d || d > end)
                fail_msg("pipenem %s --help: --%s states no default:\n%.*s", cmd, r->name, (int)(end - l), l);
        }
    }
    for (int i = 0; i < n_rows; i++)
        if (row_has_cmd(&rows[i], cmd) && !listed[i])
            fail_msg("README gives --%s to %s, but its --help does not list it", rows[i].name, cmd);
    print_message("pipenem %s --help: every option in README's table, every value option with a default\n", cmd);
}

static void test_help_matches_readme(void **state)
{
    (void)state;
    static char letters[128][48];
    memset(letters, 0, sizeof letters);
    read_readme();
    for (const cli_cmd_t *c = cli_cmds; c->name; c++)
        check_command(c->name, letters);
    for (int i = 0; i < n_rows; i++) {
        if (!rows[i].seen)
            fail_msg("README lists --%s, but no command's --help does", rows[i].name);
        for (int j = 0; j < i; j++)
            if (rows[i].letter && rows[i].letter == rows[j].letter)
                fail_msg("README binds -%c to --%s and --%s", rows[i].letter, rows[j].name, rows[i].name);
    }
    print_message("%d options, no short letter bound twice\n", n_rows);
}

/* Each old spelling still works, says it is old and names the current one. */
static void test_old_spellings(void **state)
{
    (void)state;
    static const struct {
        const char *args;
        int rc;
        const char *note, *needle;
    } cases[] = {
        {"sim -p 2 -m 4 -f 1 -B 2 -s gpipe", 0, "-p is an old spelling", "# pipenem sim: 2 stages, 4 micro-batches"},
        {"sim -P 2 -b 8 -u 2 -f 1 -B 2 -s gpipe", 0, "use --batch-size", "4 micro-batches (batch 8"},
        {"sim -P 3 -m 4 -f 1 -B 2 -s gpipe -n 10ms/1Gbps", 0, "use -N (--net)", "0-1 delay 10ms"},
        {"schedule -s gpipe -p 3 -m 4 -c", 0, "use --check", "# check: OK"},
        {"sweep --schedules gpipe,zb", 2, "use -s (--schedule)", "unknown schedule 'zb'"},
        {"sweep -m gpt9", 2, "use --model", "unknown model 'gpt9'"},
        {"sweep -B 3", 2, "use --batch-size", "does not divide --batch-size 3"},
        {"sweep -K x", 2, "use -k (--slack)", "--slack: 'x'"},
        {"netem -n pnx probe", 2, "use --netns", "--netns does not apply to probe"},
        {"calibrate --model tiny --seq-len 16 --lr 0.1 --iters 1 --warmup 0", 0, "--lr does not change", "# OK"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        int rc = tu_pipenem_run(out, sizeof out, "%s", cases[i].args);
        if (rc != cases[i].rc || !strstr(out, cases[i].note) || !strstr(out, cases[i].needle))
            fail_msg("pipenem %s: exit %d (want %d), wanted '%s' and '%s':\n%s", cases[i].args, rc, cases[i].rc,
                     cases[i].note, cases[i].needle, out);
    }
    /* the new spellings give the same output and no note */
    assert_int_equal(tu_pipenem_run(out, sizeof out, "sim -P 2 -m 4 -f 1 -B 2 -s gpipe"), 0);
    assert_null(strstr(out, "old spelling"));
    assert_non_null(strstr(out, "# pipenem sim: 2 stages, 4 micro-batches"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_help_matches_readme),
        cmocka_unit_test(test_old_spellings),
    };
    return cmocka_run_group_tests_name("cli_options", tests, NULL, NULL);
}
