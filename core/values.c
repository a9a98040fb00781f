/* Scalar parsing shared by every config option: env, durations, sizes. */
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "canopy/config.h"

typedef struct strbuf {
    char *p;
    size_t len, cap;
} strbuf;

static int sb_add(strbuf *b, const char *s, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (b->len + n + 1 > cap)
            cap *= 2;
        char *grown = realloc(b->p, cap);
        if (!grown)
            return -1;
        b->p = grown;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
    return 0;
}

static bool valid_env_name(const char *s, size_t n)
{
    if (n == 0 || !(isalpha((unsigned char)s[0]) || s[0] == '_'))
        return false;
    for (size_t i = 1; i < n; i++)
        if (!(isalnum((unsigned char)s[i]) || s[i] == '_'))
            return false;
    return true;
}

char *cn_env_expand(const char *text, const char **err)
{
    strbuf out = {0};
    *err = NULL;
    if (sb_add(&out, "", 0) != 0)
        return NULL;
    for (const char *p = text; *p;) {
        if (p[0] == '$' && p[1] == '$') {
            if (sb_add(&out, "$", 1) != 0)
                goto oom;
            p += 2;
            continue;
        }
        if (p[0] != '$' || p[1] != '{') {
            const char *next = strchr(p + 1, '$');
            size_t n = next ? (size_t)(next - p) : strlen(p);
            if (sb_add(&out, p, n) != 0)
                goto oom;
            p += n;
            continue;
        }
        const char *close = strchr(p, '}');
        if (!close) {
            *err = "unterminated ${...}";
            goto fail;
        }
        const char *body = p + 2;
        if (strncmp(body, "env:", 4) != 0) {
            *err = "unknown substitution: use ${env:VAR} or ${env:VAR:-default}";
            goto fail;
        }
        const char *name = body + 4;
        const char *sep = strstr(name, ":-");
        if (sep && sep > close)
            sep = NULL;
        size_t name_len = (size_t)((sep ? sep : close) - name);
        if (!valid_env_name(name, name_len)) {
            *err = "invalid environment variable name in ${env:...}";
            goto fail;
        }
        char var[256];
        if (name_len >= sizeof var) {
            *err = "environment variable name too long";
            goto fail;
        }
        memcpy(var, name, name_len);
        var[name_len] = '\0';
        const char *value = getenv(var);
        if (value && value[0]) {
            if (sb_add(&out, value, strlen(value)) != 0)
                goto oom;
        } else if (sep) {
            /* As in the shell, ":-" also applies when the variable is set but empty. */
            if (sb_add(&out, sep + 2, (size_t)(close - sep - 2)) != 0)
                goto oom;
        }
        p = close + 1;
    }
    return out.p;
oom:
    *err = "out of memory";
fail:
    free(out.p);
    return NULL;
}

int cn_parse_int(const char *text, int64_t *out)
{
    char *end;
    errno = 0;
    long long v = strtoll(text, &end, 10);
    if (errno || end == text || *end)
        return -1;
    *out = v;
    return 0;
}

int cn_parse_bool(const char *text, bool *out)
{
    static const char *const yes[] = {"true", "yes", "on"};
    static const char *const no[] = {"false", "no", "off"};
    for (size_t i = 0; i < 3; i++) {
        if (strcasecmp(text, yes[i]) == 0) {
            *out = true;
            return 0;
        }
        if (strcasecmp(text, no[i]) == 0) {
            *out = false;
            return 0;
        }
    }
    return -1;
}

/* A non-negative decimal number followed by a unit from the table. */
typedef struct unit {
    const char *name;
    double factor;
} unit;

static int parse_with_units(const char *text, const unit *units, size_t n_units, double bare_factor,
                            int64_t *out)
{
    while (isspace((unsigned char)*text))
        text++;
    if (!isdigit((unsigned char)*text) && *text != '.')
        return -1;
    char *end;
    errno = 0;
    double v = strtod(text, &end);
    if (errno || end == text || !isfinite(v) || v < 0)
        return -1;
    while (isspace((unsigned char)*end))
        end++;
    double factor = bare_factor;
    if (*end) {
        factor = -1;
        for (size_t i = 0; i < n_units; i++)
            if (strcmp(end, units[i].name) == 0)
                factor = units[i].factor;
        if (factor < 0)
            return -1;
    }
    double r = v * factor;
    if (r > 9.2e18)
        return -1;
    *out = (int64_t)(r + 0.5);
    return 0;
}

int cn_parse_duration_ms(const char *text, int64_t *out_ms)
{
    static const unit units[] = {{"ms", 1}, {"s", 1000}, {"m", 60000}, {"h", 3600000}};
    return parse_with_units(text, units, CN_ARRAY_LEN(units), 1, out_ms);
}

int cn_parse_size(const char *text, int64_t *out_bytes)
{
    static const unit units[] = {
        {"B", 1},         {"KiB", 1024.0},  {"MiB", 1048576.0}, {"GiB", 1073741824.0},
        {"KB", 1000.0},   {"MB", 1e6},      {"GB", 1e9},        {"k", 1000.0},
        {"Ki", 1024.0},   {"Mi", 1048576.0}, {"Gi", 1073741824.0},
    };
    return parse_with_units(text, units, CN_ARRAY_LEN(units), 1, out_bytes);
}
