/* Fault injection for the fault-matrix tests (tests/faults/): PIPENEM_FAULT=ACTION:RANK:WHEN
 * makes rank RANK do ACTION once, at WHEN, so that a fault lands at a known point of the
 * run. Without the variable every fault point is a no-op. */
#ifndef PN_PIPELINE_FAULT_H
#define PN_PIPELINE_FAULT_H

/* ACTION: kill      SIGKILL itself, as `kill -9` would
 *         stop      SIGSTOP itself (the driver sends SIGCONT later, or nobody does)
 *         close     shut down every socket of the process (control plane and transport)
 *         linkdown  set every non-loopback interface of its network namespace down
 * WHEN:   boot      right after the rendezvous, before the neighbours are connected
 *         N         halfway through iteration N's op list
 *         opt       just before iteration 1's optimizer step
 *         allreduce halfway through iteration 1's gradient all-reduce (--dp): after the
 *                   first ring step of its first bucket
 * The older form kill:RANK:ITER still works (it is kill at N).
 * A suffix @CELL limits the fault to that cell of a sweep: the sweep exports the cell it
 * is measuring as PIPENEM_CELL to its stages, so `kill:1:opt@1` lets cell 0 finish and
 * hits cell 1 (a fault without @ fires in every cell). */
typedef enum { FAULT_AT_BOOT, FAULT_AT_ITER, FAULT_AT_OPT, FAULT_AT_ALLREDUCE } fault_at_t;

/* Called by the runtime at each point; acts when the variable names this rank and point
 * (iter is the iteration for FAULT_AT_ITER and FAULT_AT_OPT). Returns only if the process
 * is still running afterwards. */
void fault_point(int rank, fault_at_t at, int iter);

#endif
