/* Rank, size and token from a launcher's environment: Slurm, Open MPI and PMI alone, and
 * mpirun inside a Slurm allocation (every rank reads the same SLURM_PROCID; Open MPI's
 * variables must win); then three `pipenem stage` processes with neither --rank,
 * --world-size nor --token under each launcher's environment form one job and train. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "pipeline/jobenv.h"
#include "tests/testutil.h"

static const char *const launcher_vars[] = {
    "SLURM_PROCID", "SLURM_NTASKS", "SLURM_JOB_ID", "SLURM_STEP_ID", "OMPI_COMM_WORLD_RANK",
    "OMPI_COMM_WORLD_SIZE", "OMPI_MCA_ess_base_jobid", "PMI_RANK", "PMI_SIZE", "PMIX_NAMESPACE",
    "PIPENEM_TOKEN",
};
#define N_VARS (sizeof launcher_vars / sizeof *launcher_vars)

static void clear_env(void)
{
    for (size_t i = 0; i < N_VARS; i++)
        unsetenv(launcher_vars[i]);
}

/* "NAME=VALUE NAME=VALUE ..." into the environment, after clearing every launcher variable. */
static void set_env(const char *assignments)
{
    clear_env();
    char buf[512];
    snprintf(buf, sizeof buf, "%s", assignments);
    for (char *save = NULL, *a = strtok_r(buf, " ", &save); a; a = strtok_r(NULL, " ", &save)) {
        char *eq = strchr(a, '=');
        assert_non_null(eq);
        *eq = '\0';
        setenv(a, eq + 1, 1);
    }
}

typedef struct {
    const char *env;
    int rank, size;     /* expected; rank -1: -EINVAL expected */
    const char *source; /* expected family, or the text the error must contain */
    const char *token;  /* expected token, NULL: -ENOENT */
} env_case_t;

static void test_rank_size_token(void **state)
{
    (void)state;
    static const env_case_t cases[] = {
        {"SLURM_PROCID=1 SLURM_NTASKS=3 SLURM_JOB_ID=77 SLURM_STEP_ID=0", 1, 3, "Slurm", "slurm-77.0"},
        {"OMPI_COMM_WORLD_RANK=2 OMPI_COMM_WORLD_SIZE=3 OMPI_MCA_ess_base_jobid=991", 2, 3, "Open MPI", "ompi-991"},
        {"PMI_RANK=0 PMI_SIZE=4 PMIX_NAMESPACE=ns1", 0, 4, "PMI", "pmix-ns1"},
        /* mpirun in a Slurm allocation: one Slurm task (mpirun), every rank under it reads
         * SLURM_PROCID=0; the rank mpirun forks itself has no SLURM_STEP_ID */
        {"SLURM_PROCID=0 SLURM_NTASKS=1 SLURM_JOB_ID=77 OMPI_COMM_WORLD_RANK=2 OMPI_COMM_WORLD_SIZE=3 "
         "OMPI_MCA_ess_base_jobid=991", 2, 3, "Open MPI", "ompi-991"},
        /* a PMI launcher (hydra) inside Slurm: one Slurm task per node */
        {"SLURM_PROCID=1 SLURM_NTASKS=2 SLURM_JOB_ID=77 SLURM_STEP_ID=3 PMI_RANK=3 PMI_SIZE=4", 3, 4, "PMI",
         "slurm-77.3"},
        {"PIPENEM_TOKEN=mine SLURM_PROCID=0 SLURM_NTASKS=2 SLURM_JOB_ID=77", 0, 2, "Slurm", "mine"},
        {"SLURM_PROCID=2 SLURM_NTASKS=2", -1, 0, "SLURM_PROCID=2 is not below SLURM_NTASKS=2", NULL},
        {"SLURM_PROCID=0", -1, 0, "SLURM_NTASKS is not", NULL},
        {"PMI_RANK=x PMI_SIZE=2", -1, 0, "PMI_RANK='x'", NULL},
        {"OMPI_COMM_WORLD_RANK=-1 OMPI_COMM_WORLD_SIZE=2 SLURM_PROCID=0 SLURM_NTASKS=2", -1, 0,
         "OMPI_COMM_WORLD_RANK='-1'", NULL},
    };
    char err[256];
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        const env_case_t *c = &cases[i];
        set_env(c->env);
        int r = -9, s = -9;
        const char *src = NULL, *tok = NULL;
        err[0] = '\0';
        int rc = jobenv_rank(&r, &s, &src, err, sizeof err);
        int trc = jobenv_token(&tok);
        print_message("%s -> rc %d rank %d size %d (%s) token %s%s%s\n", c->env, rc, r, s, src ? src : "-",
                      trc ? "none" : tok, err[0] ? "; " : "", err);
        if (c->rank < 0) {
            assert_int_equal(rc, -EINVAL);
            if (!strstr(err, c->source))
                fail_msg("the message '%s' does not say '%s'", err, c->source);
            continue;
        }
        assert_int_equal(rc, 0);
        assert_int_equal(r, c->rank);
        assert_int_equal(s, c->size);
        assert_string_equal(src, c->source);
        if (c->token) {
            assert_int_equal(trc, 0);
            assert_string_equal(tok, c->token);
        } else
            assert_int_equal(trc, -ENOENT);
    }
    set_env("");
    int r, s;
    const char *src, *tok;
    assert_int_equal(jobenv_rank(&r, &s, &src, err, sizeof err), -ENOENT);
    assert_int_equal(jobenv_token(&tok), -ENOENT);
}

/* Three `pipenem stage` processes, rank r's environment from env_of(r), no --rank,
 * --world-size or --token: all exit 0 and rank 0 prints the result. */
static void stages_under(const char *what, const char *const env[3])
{
    int port = tu_free_port();
    assert_true(port > 0);
    char cmd[2048], o[3][16384];
    FILE *f[3];
    char unset[512] = "";
    for (size_t i = 0; i < N_VARS; i++) {
        size_t at = strlen(unset);
        snprintf(unset + at, sizeof unset - at, "-u %s ", launcher_vars[i]);
    }
    for (int r = 0; r < 3; r++) {
        snprintf(cmd, sizeof cmd,
                 "env %s %s %s stage --model tiny --compute emulate:fwd=1ms,bwd=2ms --batch-size 4 --iters 2 "
                 "--dist-url tcp://127.0.0.1:%d --timeout 20 2>&1",
                 unset, env[r], tu_pipenem(), port);
        f[r] = popen(cmd, "r");
        assert_non_null(f[r]);
    }
    int ok = 1;
    for (int r = 0; r < 3; r++) {
        size_t n = fread(o[r], 1, sizeof o[r] - 1, f[r]);
        o[r][n] = '\0';
        int st = pclose(f[r]);
        int code = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
        print_message("%s: process %d (%s): exit %d\n%s", what, r, env[r], code, r == 0 ? o[r] : "");
        if (code != 0) {
            print_message("%s\n", o[r]);
            ok = 0;
        }
    }
    if (!ok)
        fail_msg("%s: a stage failed (above)", what);
    /* the process whose environment says rank 0 prints the table */
    int zero = -1;
    for (int r = 0; r < 3; r++)
        if (strstr(o[r], "# OK"))
            zero = zero < 0 ? r : 9;
    assert_int_equal(zero, 0);
    assert_non_null(strstr(o[0], "# pipenem stage: 3 ranks"));
}

static void test_stage_under_slurm(void **state)
{
    (void)state;
    static const char *const env[3] = {
        "SLURM_PROCID=0 SLURM_NTASKS=3 SLURM_JOB_ID=4242 SLURM_STEP_ID=0",
        "SLURM_PROCID=1 SLURM_NTASKS=3 SLURM_JOB_ID=4242 SLURM_STEP_ID=0",
        "SLURM_PROCID=2 SLURM_NTASKS=3 SLURM_JOB_ID=4242 SLURM_STEP_ID=0",
    };
    stages_under("srun", env);
}

static void test_stage_under_mpirun_in_slurm(void **state)
{
    (void)state;
    /* mpirun forks rank 0 in the batch step (no SLURM_STEP_ID); its daemon, a Slurm step,
     * forks the others: all read SLURM_PROCID=0 */
    static const char *const env[3] = {
        "SLURM_PROCID=0 SLURM_NTASKS=1 SLURM_JOB_ID=4242 OMPI_COMM_WORLD_RANK=0 OMPI_COMM_WORLD_SIZE=3 "
        "OMPI_MCA_ess_base_jobid=5150",
        "SLURM_PROCID=0 SLURM_NTASKS=1 SLURM_JOB_ID=4242 SLURM_STEP_ID=0 OMPI_COMM_WORLD_RANK=1 "
        "OMPI_COMM_WORLD_SIZE=3 OMPI_MCA_ess_base_jobid=5150",
        "SLURM_PROCID=0 SLURM_NTASKS=1 SLURM_JOB_ID=4242 SLURM_STEP_ID=0 OMPI_COMM_WORLD_RANK=2 "
        "OMPI_COMM_WORLD_SIZE=3 OMPI_MCA_ess_base_jobid=5150",
    };
    stages_under("mpirun inside a Slurm allocation", env);
}

static void test_stage_under_pmi(void **state)
{
    (void)state;
    static const char *const env[3] = {
        "PMI_RANK=0 PMI_SIZE=3 PMIX_NAMESPACE=job7",
        "PMI_RANK=1 PMI_SIZE=3 PMIX_NAMESPACE=job7",
        "PMI_RANK=2 PMI_SIZE=3 PMIX_NAMESPACE=job7",
    };
    stages_under("PMI", env);
}

static void test_stage_without_launcher(void **state)
{
    (void)state;
    clear_env();
    char out[4096];
    int rc = tu_pipenem_run(out, sizeof out, "stage --model tiny --dist-url tcp://127.0.0.1:1");
    print_message("no launcher, no --rank: exit %d: %s", rc, out);
    assert_int_equal(rc, 2);
    assert_non_null(strstr(out, "no rank"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rank_size_token),
        cmocka_unit_test(test_stage_under_slurm),
        cmocka_unit_test(test_stage_under_mpirun_in_slurm),
        cmocka_unit_test(test_stage_under_pmi),
        cmocka_unit_test(test_stage_without_launcher),
    };
    return cmocka_run_group_tests_name("launcher environments", tests, NULL, NULL);
}
