/* The cuda backend's memory layout: the byte sizes of the activation block's parts (misc,
 * scratch, slots) and of the pinned staging, in the order of models/cpu.c's floats; each
 * piece is rounded to 256 bytes so that every GEMM operand is aligned. */
#include "models/cuda_priv.h"
#include "models/cuda_layout.h"

void cuda_layer_sizes(const model_stage_t *st, size_t es, size_t b[CA_N])
{
    size_t BT = (size_t)st->B * st->T, BTC = BT * st->C, att = (size_t)st->B * st->NH * st->T * st->T;
    size_t el[CA_N] = {BTC, BT, BT, 3 * BTC, BTC, att, BTC, BTC, BT, BT, 4 * BTC, 4 * BTC, BTC};
    for (int i = 0; i < CA_N; i++) {
        int stat = i == CA_LN1_MEAN || i == CA_LN1_RSTD || i == CA_LN2_MEAN || i == CA_LN2_RSTD;
        b[i] = up(el[i] * (stat ? sizeof(float) : es));
    }
}

size_t cuda_layer_bytes(const model_stage_t *st, size_t es)
{
    size_t b[CA_N], n = 0;
    cuda_layer_sizes(st, es, b);
    for (int i = 0; i < CA_N; i++)
        n += b[i];
    return n;
}

size_t cuda_last_part_bytes(const model_stage_t *st, size_t es)
{
    size_t BT = (size_t)st->B * st->T;
    return st->last ? up(BT * st->C * es) + 2 * up(BT * sizeof(float)) + up(BT * st->V * es) : 0;
}

size_t cuda_slot_bytes(const model_stage_t *st, size_t es)
{
    size_t btc = up((size_t)st->B * st->T * st->C * es), nl = st->layer_end - st->layer_begin;
    return btc + nl * (st->p.recompute ? btc : cuda_layer_bytes(st, es)) + cuda_last_part_bytes(st, es);
}

/* dA, dB, dln, datty (BTC each), dqkv (3BTC), dfch (4BTC), datt (B,NH,T,T), and with
 * recompute one layer's full activations: as cpu.c. */
size_t cuda_scratch_bytes(const model_stage_t *st, size_t es)
{
    size_t BTC = (size_t)st->B * st->T * st->C;
    return 4 * up(BTC * es) + up(3 * BTC * es) + up(4 * BTC * es) + up((size_t)st->B * st->NH * st->T * st->T * es) +
           (st->p.recompute ? cuda_layer_bytes(st, es) : 0);
}

/* tokens, targets, the loss accumulator and the overflow flag */
size_t cuda_misc_bytes(const model_stage_t *st)
{
    size_t BT = (size_t)st->B * st->T;
    return 2 * up(BT * sizeof(int)) + up(sizeof(double)) + up(sizeof(int));
}

size_t cuda_pin_bytes(const model_stage_t *st, size_t es)
{
    size_t BT = (size_t)st->B * st->T;
    return up(BT * st->C * es) + 2 * up(BT * sizeof(int)) + up(sizeof(double));
}

