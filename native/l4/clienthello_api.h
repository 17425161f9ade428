/*
 * The TLS ClientHello, read for its server name (SNI, RFC 6066) without
 * terminating TLS: what an SNI passthrough listener routes by. A pure
 * function over the bytes a connection has sent so far: no I/O, no
 * allocation, no globals. The caller calls again from the same start with
 * more bytes until the answer is not CH_PARTIAL.
 *
 * Like api.h, this file is read by cffi's cdef parser too: plain
 * declarations only.
 */
#ifndef UPROXY_CLIENTHELLO_API_H
#define UPROXY_CLIENTHELLO_API_H
#include <stddef.h>
#include <stdint.h>

/* Return values of ch_parse(). */
#define CH_FOUND     0    /* a complete, well-formed ClientHello: see struct ch_hello */
#define CH_PARTIAL  -1    /* no error so far; more bytes are needed */
#define CH_ERROR    -2    /* not TLS, malformed, or too long: error says why */

/* The ClientHello and the record headers that carry it must end within
 * the first CH_MAX_BYTES bytes of the stream; bytes past that are never
 * looked at, so CH_PARTIAL comes only for fewer bytes than this. */
#define CH_MAX_BYTES 16384
#define CH_MAX_NAME  255  /* bytes of a host name (RFC 6066: HostName<1..2^16-1>, DNS: 255) */

struct ch_hello {
    uint32_t hello_len;       /* bytes of buf up to the ClientHello's last byte */
    uint32_t records;         /* TLS records the ClientHello spans (1 unless fragmented) */
    uint32_t name_off;        /* where the name's first byte is in buf (a name that
                                 records split continues after a record header:
                                 name[] holds it whole) */
    uint32_t name_len;        /* bytes of the server name; 0: the client sent none */
    uint16_t version;         /* the ClientHello's legacy_version (0x0303 for 1.2 and 1.3) */
    uint16_t pad;
    uint32_t pad2;
    const char *error;        /* on CH_ERROR: a short static reason */
    char name[256];           /* the server name as sent, NUL-terminated */
};

/* Read the ClientHello at the start of buf[0..len). CH_FOUND once the
 * whole message is there and every length in it adds up; bytes after it
 * (more records, early data) are not looked at. CH_ERROR as soon as the
 * bytes show a mistake: a first record that is not a handshake, any other
 * record type before the ClientHello ends, a handshake message that is not
 * a ClientHello, a length that does not fit, a second server_name
 * extension or host name, a host name that is empty, longer than
 * CH_MAX_NAME or not made of letters, digits, '-', '_' and dot-separated
 * labels, or no ClientHello within CH_MAX_BYTES. */
int ch_parse(const uint8_t *buf, size_t len, struct ch_hello *out);

#endif
