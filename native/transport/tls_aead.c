/* Per-slot AEAD contexts for sealing and opening records (tls_aead.h). */
#include <stdlib.h>
#include <sys/mman.h>
#include <openssl/err.h>
#include "transport/tls_aead.h"

static const char *const CIPHER_NAME[3] = { "AES-128-GCM", "AES-256-GCM", "ChaCha20-Poly1305" };

struct tp_aead_slots *tp_aead_slots_new(uint32_t nconns)
{
    struct tp_aead_slots *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    /* Reserved, not touched: a slot's page is used once it seals or opens. */
    void *m = mmap(NULL, sizeof(EVP_CIPHER_CTX *) * nconns, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED) {
        free(s);
        return NULL;
    }
    s->ctx = m;
    for (int i = 0; i < 3; i++)
        s->cipher[i] = EVP_CIPHER_fetch(NULL, CIPHER_NAME[i], NULL);
    ERR_clear_error();
    return s;
}

void tp_aead_slots_free(struct tp_aead_slots *s, uint32_t nconns)
{
    if (!s)
        return;
    for (uint32_t i = 0; i < nconns; i++)
        if (s->ctx[i])
            EVP_CIPHER_CTX_free(s->ctx[i]);   /* cleanses the key schedule */
    munmap(s->ctx, sizeof(EVP_CIPHER_CTX *) * nconns);
    for (int i = 0; i < 3; i++)
        EVP_CIPHER_free(s->cipher[i]);
    free(s);
}

bool tp_aead_slot_key(struct tp_aead_slots *s, uint32_t i, int which, const uint8_t *key, bool encrypt)
{
    EVP_CIPHER *ci = s->cipher[which];
    EVP_CIPHER_CTX **x = &s->ctx[i];
    bool ok = ci != NULL;
    if (ok && !*x)
        ok = (*x = EVP_CIPHER_CTX_new()) != NULL;
    if (ok) {
        /* The same cipher as the slot's last connection: only the key
         * changes (passing the cipher again would free and remake the
         * provider's context: an allocation per connection). */
        const EVP_CIPHER *had = EVP_CIPHER_CTX_get0_cipher(*x);
        const EVP_CIPHER *use = had == ci ? NULL : ci;
        ok = (encrypt ? EVP_EncryptInit_ex2(*x, use, key, NULL, NULL)
                      : EVP_DecryptInit_ex2(*x, use, key, NULL, NULL)) == 1;
    }
    ERR_clear_error();
    return ok;
}
