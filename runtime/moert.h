/* moert.h: the public API of libmoert, the runtime that moecc's generated
 * trainers link. Everything here carries the moert_ prefix. */
#ifndef MOERT_H
#define MOERT_H

#include "moert_core.h"
#include "moert_data.h"
#include "moert_comm.h"

#endif /* MOERT_H */
