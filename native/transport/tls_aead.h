/*
 * The AEAD contexts of the records we seal (tls_seal.c) and open
 * (tls_open.c) ourselves: per worker, one per connection slot, made on a
 * slot's first use and re-keyed by its later connections (no allocation
 * per connection after warm-up, none per record); the three TLS 1.3
 * ciphers fetched once per worker.
 */
#ifndef UPROXY_TLS_AEAD_H
#define UPROXY_TLS_AEAD_H
#include <stdbool.h>
#include <stdint.h>
#include <openssl/evp.h>

struct tp_aead_slots {
    EVP_CIPHER *cipher[3];        /* AES-128-GCM, AES-256-GCM, ChaCha20-Poly1305 (tp_ktls_*_key's `which`) */
    EVP_CIPHER_CTX **ctx;         /* [nconns]: made on a slot's first use, re-keyed after */
};

/* NULL when out of memory. */
struct tp_aead_slots *tp_aead_slots_new(uint32_t nconns);
void tp_aead_slots_free(struct tp_aead_slots *s, uint32_t nconns);
/* Slot i's context keyed with cipher `which` and key, to encrypt
 * (encrypt true) or decrypt; false if the library refuses. */
bool tp_aead_slot_key(struct tp_aead_slots *s, uint32_t i, int which, const uint8_t *key, bool encrypt);

#endif
