/* Growing arrays: the doubling every append-to-a-buffer site needs, written once. */
#ifndef PN_COMMON_GROW_H
#define PN_COMMON_GROW_H

#include <stddef.h>

/* Room for element n (0-based) of elem bytes each in arr, whose capacity is *cap elements:
 * arr itself while n < *cap, else arr reallocated to twice *cap (first elements when
 * *cap is 0) with *cap updated. NULL when memory runs out; arr and *cap are then
 * untouched and still valid, so the caller keeps what it has. */
void *pn_grow(void *arr, size_t *cap, size_t n, size_t elem, size_t first);

#endif
