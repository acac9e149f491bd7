/*
 * What browsers and proxies need of every response: CORS (the origins of
 * --allowed-origins may call the server from a page; a preflight OPTIONS is
 * answered), the client's X-Request-Id echoed, and X-Accel-Buffering: no on
 * streams (set where the stream starts). docs/server.md, "Browsers and
 * proxies".
 */
#include <microhttpd.h>
#include <string.h>
#include <strings.h>

#include "server/server_internal.h"

/* 1: origin is in list (comma-separated, spaces ignored; "*": any). */
int srv_cors_allowed(const char *list, const char *origin)
{
    if (list == NULL || origin == NULL || origin[0] == '\0')
        return 0;
    size_t on = strlen(origin);
    for (const char *p = list; *p;) {
        while (*p == ' ' || *p == ',')
            p++;
        const char *e = p;
        while (*e && *e != ',')
            e++;
        const char *end = e;
        while (end > p && end[-1] == ' ')
            end--;
        size_t n = (size_t)(end - p);
        if ((n == 1 && *p == '*') || (n == on && strncasecmp(p, origin, n) == 0))
            return 1;
        p = e;
    }
    return 0;
}

/* A header value a client sent that may be sent back: visible ASCII and
 * spaces only, 1 to 256 bytes (MHD refuses CR and LF in a request anyway). */
static int echo_ok(const char *v)
{
    size_t n = v ? strlen(v) : 0;
    if (n == 0 || n > 256)
        return 0;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)v[i] < 0x20 || (unsigned char)v[i] > 0x7e)
            return 0;
    return 1;
}

void srv_http_decorate(const anvil_server *s, struct MHD_Connection *c, struct MHD_Response *r)
{
    const char *rid = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "X-Request-Id");
    if (echo_ok(rid))
        MHD_add_response_header(r, "X-Request-Id", rid);
    const char *origin = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Origin");
    if (!echo_ok(origin) || !srv_cors_allowed(s->opts.allowed_origins, origin))
        return;
    /* the origin itself rather than "*": also right for a page that sends
     * credentials, and Vary keeps caches from mixing origins */
    MHD_add_response_header(r, "Access-Control-Allow-Origin", origin);
    MHD_add_response_header(r, "Vary", "Origin");
    MHD_add_response_header(r, "Access-Control-Expose-Headers", "X-Request-Id");
}

int srv_cors_preflight(const anvil_server *s, struct MHD_Connection *c, struct MHD_Response *r)
{
    const char *origin = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Origin");
    const char *want = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Access-Control-Request-Method");
    if (origin == NULL || want == NULL)
        return 0; /* a plain OPTIONS */
    if (!echo_ok(origin) || !srv_cors_allowed(s->opts.allowed_origins, origin))
        return -1;
    srv_http_decorate(s, c, r);
    MHD_add_response_header(r, "Access-Control-Allow-Methods", "GET, POST, OPTIONS");
    /* the headers the page asked for (Authorization, Content-Type,
     * X-Request-Id, ...): any header may carry a request's metadata */
    const char *hdrs = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Access-Control-Request-Headers");
    MHD_add_response_header(r, "Access-Control-Allow-Headers",
                            echo_ok(hdrs) ? hdrs : "Authorization, Content-Type, X-Request-Id");
    MHD_add_response_header(r, "Access-Control-Max-Age", "600");
    return 1;
}
