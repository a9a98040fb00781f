/* Config parsing: YAML positions, env substitution, durations, sizes, config maps. */
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

static void test_durations(void **state)
{
    (void)state;
    int64_t v;
    assert_int_equal(cn_parse_duration_ms("10ms", &v), 0);
    assert_int_equal(v, 10);
    assert_int_equal(cn_parse_duration_ms("1s", &v), 0);
    assert_int_equal(v, 1000);
    assert_int_equal(cn_parse_duration_ms("2.5s", &v), 0);
    assert_int_equal(v, 2500);
    assert_int_equal(cn_parse_duration_ms("10m", &v), 0);
    assert_int_equal(v, 600000);
    assert_int_equal(cn_parse_duration_ms("1h", &v), 0);
    assert_int_equal(v, 3600000);
    assert_int_equal(cn_parse_duration_ms("250", &v), 0);
    assert_int_equal(v, 250);
    assert_int_not_equal(cn_parse_duration_ms("10q", &v), 0);
    assert_int_not_equal(cn_parse_duration_ms("-1s", &v), 0);
    assert_int_not_equal(cn_parse_duration_ms("", &v), 0);
    assert_int_not_equal(cn_parse_duration_ms("s", &v), 0);
}

static void test_sizes(void **state)
{
    (void)state;
    int64_t v;
    assert_int_equal(cn_parse_size("4MiB", &v), 0);
    assert_int_equal(v, 4 * 1024 * 1024);
    assert_int_equal(cn_parse_size("512KiB", &v), 0);
    assert_int_equal(v, 512 * 1024);
    assert_int_equal(cn_parse_size("1GiB", &v), 0);
    assert_int_equal(v, 1LL << 30);
    assert_int_equal(cn_parse_size("4MB", &v), 0);
    assert_int_equal(v, 4000000);
    assert_int_equal(cn_parse_size("100", &v), 0);
    assert_int_equal(v, 100);
    assert_int_not_equal(cn_parse_size("4 parsecs", &v), 0);
    assert_int_not_equal(cn_parse_size("MiB", &v), 0);
}

static void test_env_expand(void **state)
{
    (void)state;
    const char *err;
    setenv("CANOPY_T_A", "alpha", 1);
    setenv("CANOPY_T_EMPTY", "", 1);
    unsetenv("CANOPY_T_UNSET");
    char *s = cn_env_expand("x-${env:CANOPY_T_A}-y", &err);
    assert_string_equal(s, "x-alpha-y");
    free(s);
    s = cn_env_expand("${env:CANOPY_T_UNSET:-fallback}", &err);
    assert_string_equal(s, "fallback");
    free(s);
    s = cn_env_expand("${env:CANOPY_T_EMPTY:-fallback}", &err);
    assert_string_equal(s, "fallback");
    free(s);
    s = cn_env_expand("${env:CANOPY_T_UNSET}", &err);
    assert_string_equal(s, "");
    free(s);
    s = cn_env_expand("cost $$5 ${env:CANOPY_T_A:-b}", &err);
    assert_string_equal(s, "cost $5 alpha");
    free(s);
    s = cn_env_expand("${env:CANOPY_T_UNSET:-a:b/c}", &err);
    assert_string_equal(s, "a:b/c");
    free(s);
    assert_null(cn_env_expand("${env:CANOPY_T_A", &err));
    assert_non_null(strstr(err, "unterminated"));
    assert_null(cn_env_expand("${HOME}", &err));
    assert_non_null(strstr(err, "${env:VAR}"));
    assert_null(cn_env_expand("${env:1BAD}", &err));
}

static void test_env_in_document(void **state)
{
    (void)state;
    setenv("CANOPY_T_DIR", "/tmp/from-env", 1);
    cn_diag d = {0};
    const char *yaml = "a:\n  b: ${env:CANOPY_T_DIR}\n  c: ${env:CANOPY_T_NOPE:-7}\n";
    cn_document *doc = cn_document_parse("t.yaml", yaml, strlen(yaml), &d);
    assert_non_null(doc);
    const cn_node *a = cn_node_get(doc->root, "a");
    assert_string_equal(cn_node_get(a, "b")->scalar, "/tmp/from-env");
    assert_string_equal(cn_node_get(a, "c")->scalar, "7");
    assert_int_equal(cn_node_get(a, "c")->line, 3);
    assert_int_equal(cn_node_get(a, "c")->col, 6);
    cn_document_free(doc);
}

static void test_yaml_errors(void **state)
{
    (void)state;
    cn_diag d = {0};
    const char *dup = "a: 1\nb: 2\na: 3\n";
    assert_null(cn_document_parse("dup.yaml", dup, strlen(dup), &d));
    assert_true(diag_has(&d, "dup.yaml:3:1: duplicate key \"a\""));
    cn_diag_free(&d);

    const char *broken = "a:\n  - b\n c: [\n";
    assert_null(cn_document_parse("broken.yaml", broken, strlen(broken), &d));
    assert_true(d.n_errors == 1);
    assert_non_null(strstr(d.errors[0], "broken.yaml:"));
    assert_non_null(strstr(d.errors[0], "invalid YAML"));
    cn_diag_free(&d);

    const char *alias = "a: &x 1\nb: *x\n";
    assert_null(cn_document_parse("alias.yaml", alias, strlen(alias), &d));
    assert_true(diag_has(&d, "alias.yaml:2:4: YAML aliases"));
    cn_diag_free(&d);

    const char *list = "- a\n- b\n";
    assert_null(cn_document_parse("list.yaml", list, strlen(list), &d));
    assert_true(diag_has(&d, "the config must be a map"));
    cn_diag_free(&d);
}

typedef struct sample_ctx {
    char *name;
    int64_t count;
    bool on;
    int64_t wait;
    int64_t size;
    int mode;
    int color;
    cn_strlist urls;
    struct {
        int64_t depth;
        char *label;
    } nested;
} sample_ctx;

static const char *const colors[] = {"red", "green", NULL};
static const cn_option sample_options[] = {
    {CN_OPT_STR, "name", "anon", offsetof(sample_ctx, name), "n"},
    {CN_OPT_INT, "count", "3", offsetof(sample_ctx, count), "c", .min = 1, .max = 10},
    {CN_OPT_BOOL, "on", "false", offsetof(sample_ctx, on), "o"},
    {CN_OPT_DURATION, "wait", "1s", offsetof(sample_ctx, wait), "w"},
    {CN_OPT_SIZE, "size", "1KiB", offsetof(sample_ctx, size), "s"},
    {CN_OPT_MODE, "mode", "0660", offsetof(sample_ctx, mode), "m"},
    {CN_OPT_ENUM, "color", "red", offsetof(sample_ctx, color), "c", .choices = colors},
    {CN_OPT_STRLIST, "urls", "ipc:///a", offsetof(sample_ctx, urls), "u"},
    {CN_OPT_MAP, "nested", NULL, offsetof(sample_ctx, nested), "x",
     .sub = (const cn_option[]){{CN_OPT_INT, "depth", "5", 0, "d"},
                                {CN_OPT_STR, "label", NULL, offsetof(sample_ctx, nested.label) -
                                                                 offsetof(sample_ctx, nested), "l", .required = true},
                                CN_OPT_END}},
    CN_OPT_END};

static int apply_yaml(const char *yaml, sample_ctx *ctx, cn_diag *d)
{
    cn_document *doc = cn_document_parse("opts.yaml", yaml, strlen(yaml), d);
    assert_non_null(doc);
    int rc = cn_options_apply(sample_options, ctx, doc->root, d);
    cn_document_free(doc);
    return rc;
}

static void test_options_defaults_and_values(void **state)
{
    (void)state;
    cn_diag d = {0};
    sample_ctx ctx = {0};
    int rc = apply_yaml("name: svc\ncount: 7\non: yes\nwait: 250ms\nsize: 4MiB\nmode: \"0600\"\ncolor: green\n"
                        "urls: [ipc:///x, tcp://127.0.0.1:1]\nnested: {label: hi}\n",
                        &ctx, &d);
    diag_print(&d);
    assert_int_equal(rc, 0);
    assert_string_equal(ctx.name, "svc");
    assert_int_equal(ctx.count, 7);
    assert_true(ctx.on);
    assert_int_equal(ctx.wait, 250);
    assert_int_equal(ctx.size, 4 << 20);
    assert_int_equal(ctx.mode, 0600);
    assert_int_equal(ctx.color, 1);
    assert_int_equal(ctx.urls.n, 2);
    assert_string_equal(ctx.urls.v[1], "tcp://127.0.0.1:1");
    assert_int_equal(ctx.nested.depth, 5);
    assert_string_equal(ctx.nested.label, "hi");
    cn_options_free(sample_options, &ctx);

    memset(&ctx, 0, sizeof ctx);
    rc = apply_yaml("nested:\n  label: x\n", &ctx, &d);
    assert_int_equal(rc, 0);
    assert_string_equal(ctx.name, "anon");
    assert_int_equal(ctx.count, 3);
    assert_int_equal(ctx.size, 1024);
    assert_int_equal(ctx.urls.n, 1);
    assert_string_equal(ctx.urls.v[0], "ipc:///a");
    cn_options_free(sample_options, &ctx);
    cn_diag_free(&d);
}

static void test_options_errors(void **state)
{
    (void)state;
    cn_diag d = {0};
    sample_ctx ctx = {0};
    int rc = apply_yaml("count: 11\non: maybe\nwait: soon\ncolor: blue\nbogus: 1\nurls: {a: 1}\nnested: {}\n", &ctx,
                        &d);
    assert_int_equal(rc, -1);
    assert_true(diag_has(&d, "opts.yaml:1:8: count must be between 1 and 10"));
    assert_true(diag_has(&d, "opts.yaml:2:5: on: \"maybe\" is not true or false"));
    assert_true(diag_has(&d, "opts.yaml:3:7: wait: \"soon\" is not a duration"));
    assert_true(diag_has(&d, "opts.yaml:4:8: color: \"blue\" is not one of: red, green"));
    assert_true(diag_has(&d, "opts.yaml:5:1: unknown option \"bogus\""));
    assert_true(diag_has(&d, "opts.yaml:6:7: urls must be a list of strings, not a map"));
    assert_true(diag_has(&d, "missing required option \"label\""));
    cn_options_free(sample_options, &ctx);
    cn_diag_free(&d);
}

/* A free-form map of scalars (CN_OPT_STRMAP), as the kafka exporter's `producer:` takes. */
typedef struct strmap_ctx {
    cn_strlist props;
} strmap_ctx;

static const cn_option strmap_options[] = {
    {CN_OPT_STRMAP, "props", NULL, offsetof(strmap_ctx, props), "p"},
    CN_OPT_END};

static void test_options_strmap(void **state)
{
    (void)state;
    cn_diag d = {0};
    strmap_ctx ctx = {0};
    const char *yaml = "props:\n  linger.ms: \"20\"\n  sasl.username: canopy\n";
    cn_document *doc = cn_document_parse("opts.yaml", yaml, strlen(yaml), &d);
    assert_non_null(doc);
    assert_int_equal(cn_options_apply(strmap_options, &ctx, doc->root, &d), 0);
    /* key, value, key, value, in the order written */
    assert_int_equal(ctx.props.n, 4);
    assert_string_equal(ctx.props.v[0], "linger.ms");
    assert_string_equal(ctx.props.v[1], "20");
    assert_string_equal(ctx.props.v[2], "sasl.username");
    assert_string_equal(ctx.props.v[3], "canopy");
    cn_options_free(strmap_options, &ctx);
    assert_int_equal(ctx.props.n, 0);
    cn_document_free(doc);

    yaml = "props:\n  ok: yes\n  nested: {a: 1}\n";
    doc = cn_document_parse("opts.yaml", yaml, strlen(yaml), &d);
    assert_int_equal(cn_options_apply(strmap_options, &ctx, doc->root, &d), -1);
    assert_true(diag_has(&d, "opts.yaml:3:11: props.nested must be a string, not a map"));
    cn_options_free(strmap_options, &ctx);
    cn_document_free(doc);

    yaml = "props: [a, b]\n";
    doc = cn_document_parse("opts.yaml", yaml, strlen(yaml), &d);
    assert_int_equal(cn_options_apply(strmap_options, &ctx, doc->root, &d), -1);
    assert_true(diag_has(&d, "opts.yaml:1:8: props must be a map, not a list"));
    cn_options_free(strmap_options, &ctx);
    cn_document_free(doc);
    cn_diag_free(&d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_durations),
        cmocka_unit_test(test_sizes),
        cmocka_unit_test(test_env_expand),
        cmocka_unit_test(test_env_in_document),
        cmocka_unit_test(test_yaml_errors),
        cmocka_unit_test(test_options_defaults_and_values),
        cmocka_unit_test(test_options_errors),
        cmocka_unit_test(test_options_strmap),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
