/*
 * Call trees: counts, SkyWalking durations over runs of consecutive
 * sequences, node limits, signature parsing, and the three renderers.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <zlib.h>
#include <cmocka.h>

#include "canopy/string_key.h"
#include "profiles/calltree.h"
#include "pprof/profile.pb-c.h"

/* Adds a stack given as NULL-terminated signatures. */
static int add(cn_calltree *t, cn_calltree_run *run, int32_t seq, int64_t time_ms, const char *const *frames)
{
    uint32_t sigs[32];
    size_t n = 0;
    for (; frames[n]; n++)
        sigs[n] = cn_calltree_intern(t, frames[n]);
    return cn_calltree_add(t, sigs, n, run, seq, time_ms);
}

/* The node at a path of signatures from the roots, or NULL. */
static const cn_calltree_node *find(const cn_calltree *t, const char *const *path)
{
    const cn_calltree_node *nodes = cn_calltree_nodes(t);
    uint32_t at = cn_calltree_first_root(t), found = CN_CALLTREE_NONE;
    for (size_t i = 0; path[i]; i++) {
        found = CN_CALLTREE_NONE;
        for (uint32_t c = at; c != CN_CALLTREE_NONE; c = nodes[c].next_sibling)
            if (strcmp(cn_calltree_sig(t, nodes[c].sig), path[i]) == 0)
                found = c;
        if (found == CN_CALLTREE_NONE)
            return NULL;
        at = nodes[found].first_child;
    }
    return found == CN_CALLTREE_NONE ? NULL : &nodes[found];
}

#define P(...) ((const char *const[]){__VA_ARGS__, NULL})

static void test_counts_and_durations(void **state)
{
    (void)state;
    cn_calltree *t = cn_calltree_new(1000);
    cn_calltree_run run = {0};
    /* seq:  0     1     2     3     4   (6: a gap)
     * time: 0    10    20    30    40    60
     * stack a;b   a;b   a;c   a;b   a;b   a  */
    add(t, &run, 0, 1000, P("a", "b"));
    add(t, &run, 1, 1010, P("a", "b"));
    add(t, &run, 2, 1020, P("a", "c"));
    add(t, &run, 3, 1030, P("a", "b"));
    add(t, &run, 4, 1040, P("a", "b"));
    add(t, &run, 6, 1060, P("a"));
    const cn_calltree_node *a = find(t, P("a")), *b = find(t, P("a", "b")), *c = find(t, P("a", "c"));
    assert_non_null(a);
    assert_non_null(b);
    assert_non_null(c);
    assert_int_equal(a->count, 6);
    assert_int_equal(a->self, 1);
    /* a runs 0..4 (40 ms) and then 6 alone (0 ms). */
    assert_int_equal(a->duration_ms, 40);
    /* b runs 0..1 and 3..4: 10 + 10. */
    assert_int_equal(b->count, 4);
    assert_int_equal(b->self, 4);
    assert_int_equal(b->duration_ms, 20);
    /* c runs at 2 alone. */
    assert_int_equal(c->count, 1);
    assert_int_equal(c->duration_ms, 0);
    assert_int_equal(cn_calltree_samples(t), 6);
    assert_int_equal(cn_calltree_node_count(t), 3);

    /* A second segment (its own run state) adds counts but never links runs with the first. */
    cn_calltree_run run2 = {0};
    add(t, &run2, 0, 5000, P("a", "b"));
    add(t, &run2, 1, 5005, P("a", "b"));
    assert_int_equal(find(t, P("a", "b"))->duration_ms, 25);
    /* A late snapshot (sequence below the last) is counted but extends nothing. */
    add(t, &run2, 0, 5001, P("a", "b"));
    assert_int_equal(find(t, P("a", "b"))->count, 7);
    assert_int_equal(find(t, P("a", "b"))->duration_ms, 25);
    cn_calltree_run_clear(&run);
    cn_calltree_run_clear(&run2);
    cn_calltree_free(t);
}

static void test_same_signature_other_parent(void **state)
{
    (void)state;
    cn_calltree *t = cn_calltree_new(1000);
    add(t, NULL, 0, 0, P("a", "x"));
    add(t, NULL, 0, 0, P("b", "x"));
    add(t, NULL, 0, 0, P("a", "x"));
    assert_int_equal(cn_calltree_node_count(t), 4);
    assert_int_equal(find(t, P("a", "x"))->count, 2);
    assert_int_equal(find(t, P("b", "x"))->count, 1);
    /* No frames at all: still counted, as one "[no frames]" root. */
    assert_int_equal(cn_calltree_add(t, NULL, 0, NULL, 0, 0), 0);
    assert_int_equal(find(t, P(CN_CALLTREE_EMPTY))->self, 1);
    assert_int_equal(cn_calltree_samples(t), 4);
    cn_calltree_free(t);
}

/* A tree presized for 16 nodes grows its node array and child table to hold many more, and still finds each. */
static void test_presized_grows(void **state)
{
    (void)state;
    cn_calltree *t = cn_calltree_new_presized(5000, 16);
    assert_non_null(t);
    char names[300][8];
    for (int i = 0; i < 300; i++) {
        snprintf(names[i], sizeof names[i], "f%d", i);
        add(t, NULL, 0, 0, P("root", names[i]));
        add(t, NULL, 0, 0, P("root", names[i]));
    }
    assert_int_equal(cn_calltree_node_count(t), 301);
    for (int i = 0; i < 300; i += 37)
        assert_int_equal(find(t, P("root", names[i]))->count, 2);
    assert_int_equal(find(t, P("root"))->count, 600);
    cn_calltree_free(t);
}

static void test_node_limit(void **state)
{
    (void)state;
    cn_calltree *t = cn_calltree_new(3);
    assert_int_equal(add(t, NULL, 0, 0, P("a", "b", "c")), 0);
    /* a;b exist; a;b;d needs a 4th node: cut under a "[truncated]" child of a;b. */
    assert_int_equal(add(t, NULL, 0, 0, P("a", "b", "d", "e")), -1);
    assert_int_equal(add(t, NULL, 0, 0, P("a", "x")), -1);
    const cn_calltree_node *tr = find(t, P("a", "b", CN_CALLTREE_TRUNCATED));
    assert_non_null(tr);
    assert_int_equal(tr->self, 1);
    assert_non_null(find(t, P("a", CN_CALLTREE_TRUNCATED)));
    assert_int_equal(cn_calltree_truncated(t), 2);
    assert_int_equal(cn_calltree_samples(t), 3);
    /* Counts still add up at the root. */
    assert_int_equal(find(t, P("a"))->count, 3);
    /* Bounded: thousands of distinct stacks never grow past the reserve. */
    char sig[32];
    for (int i = 0; i < 5000; i++) {
        snprintf(sig, sizeof sig, "r%d", i);
        add(t, NULL, 0, 0, P(sig, "y"));
    }
    assert_true(cn_calltree_node_count(t) <= 3 + 3 / 16 + 16);
    assert_int_equal(cn_calltree_samples(t), 5003);
    cn_calltree_free(t);
}

static void test_signature_parse(void **state)
{
    (void)state;
    const char *file, *func;
    size_t fl, nl;
    int64_t line;
    assert_true(cn_signature_parse("/srv/app.py.checkout: 86", &file, &fl, &func, &nl, &line));
    assert_int_equal(fl, strlen("/srv/app.py"));
    assert_memory_equal(file, "/srv/app.py", fl);
    assert_int_equal(nl, strlen("checkout"));
    assert_memory_equal(func, "checkout", nl);
    assert_int_equal(line, 86);
    assert_true(cn_signature_parse("/usr/lib/x.py.<module>: 1", &file, &fl, &func, &nl, &line));
    assert_memory_equal(func, "<module>", nl);
    assert_false(cn_signature_parse("no line number", &file, &fl, &func, &nl, &line));
    assert_int_equal(nl, strlen("no line number"));
    assert_false(cn_signature_parse("nodot: 12", &file, &fl, &func, &nl, &line));
    assert_false(cn_signature_parse("a.py.f: 12x", &file, &fl, &func, &nl, &line));
}

static char *render_to_string(int (*fn)(const cn_calltree *, FILE *), const cn_calltree *t, size_t *len)
{
    char *buf = NULL;
    FILE *out = open_memstream(&buf, len);
    assert_non_null(out);
    assert_int_equal(fn(t, out), 0);
    fclose(out);
    return buf;
}

static void test_folded(void **state)
{
    (void)state;
    cn_calltree *t = cn_calltree_new(100);
    add(t, NULL, 0, 0, P("m.py.main: 1", "m.py.work: 5"));
    add(t, NULL, 0, 0, P("m.py.main: 1", "m.py.work: 5"));
    add(t, NULL, 0, 0, P("m.py.main: 1"));
    add(t, NULL, 0, 0, P("m.py.main: 1", "odd;name\nx.py.f: 2"));
    size_t len;
    char *text = render_to_string(cn_calltree_write_folded, t, &len);
    assert_non_null(strstr(text, "m.py.main: 1;m.py.work: 5 2\n"));
    assert_non_null(strstr(text, "m.py.main: 1 1\n"));
    assert_non_null(strstr(text, "m.py.main: 1;odd:name x.py.f: 2 1\n"));
    long sum = 0;
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n"))
        sum += atol(strrchr(line, ' ') + 1);
    assert_int_equal(sum, cn_calltree_samples(t));
    free(text);
    cn_calltree_free(t);
}

static int write_pprof_plain(const cn_calltree *t, FILE *out)
{
    cn_profile_meta meta = {.task_id = "t1", .service = "shop", .start_ms = 1000, .end_ms = 3000, .period_ms = 10};
    return cn_calltree_write_pprof(t, &meta, out);
}

static void test_pprof(void **state)
{
    (void)state;
    cn_calltree *t = cn_calltree_new(100);
    cn_calltree_run run = {0};
    add(t, &run, 0, 100, P("/srv/app.py.app: 130", "/srv/app.py.checkout: 86"));
    add(t, &run, 1, 110, P("/srv/app.py.app: 130", "/srv/app.py.checkout: 86"));
    add(t, &run, 2, 120, P("/srv/app.py.app: 130", "/srv/app.py.checkout: 90", "/lib/h.py.sha: 3"));
    size_t len;
    char *gz = render_to_string(write_pprof_plain, t, &len);
    assert_true(len > 18);
    assert_int_equal((unsigned char)gz[0], 0x1f); /* gzip magic */
    assert_int_equal((unsigned char)gz[1], 0x8b);
    uint8_t raw[65536];
    z_stream z = {0};
    assert_int_equal(inflateInit2(&z, 15 + 16), Z_OK);
    z.next_in = (Bytef *)gz;
    z.avail_in = (uInt)len;
    z.next_out = raw;
    z.avail_out = sizeof raw;
    assert_int_equal(inflate(&z, Z_FINISH), Z_STREAM_END);
    size_t raw_len = sizeof raw - z.avail_out;
    inflateEnd(&z);
    Perftools__Profiles__Profile *p = perftools__profiles__profile__unpack(NULL, raw_len, raw);
    assert_non_null(p);
    assert_string_equal(p->string_table[0], "");
    assert_int_equal(p->n_sample_type, 2);
    assert_string_equal(p->string_table[p->sample_type[0]->type], "samples");
    assert_string_equal(p->string_table[p->sample_type[1]->unit], "milliseconds");
    assert_string_equal(p->string_table[p->default_sample_type], "samples");
    assert_int_equal(p->time_nanos, 1000 * 1000000LL);
    /* Functions: app and checkout (two lines of checkout share one function) and sha. */
    assert_int_equal(p->n_function, 3);
    bool seen_checkout = false;
    for (size_t i = 0; i < p->n_function; i++) {
        const char *name = p->string_table[p->function[i]->name];
        if (strcmp(name, "checkout") == 0) {
            seen_checkout = true;
            assert_string_equal(p->string_table[p->function[i]->filename], "/srv/app.py");
        }
    }
    assert_true(seen_checkout);
    assert_int_equal(p->n_location, 4);
    int64_t total = 0;
    bool seen_line_90 = false;
    for (size_t i = 0; i < p->n_sample; i++) {
        total += p->sample[i]->value[0];
        /* Leaf first: location_id[0] is the deepest frame. */
        uint64_t leaf = p->sample[i]->location_id[0];
        for (size_t l = 0; l < p->n_location; l++)
            if (p->location[l]->id == leaf && p->location[l]->line[0]->line == 3)
                assert_int_equal(p->sample[i]->n_location_id, 3);
        for (size_t l = 0; l < p->n_location; l++)
            if (p->location[l]->line[0]->line == 90)
                seen_line_90 = true;
    }
    assert_true(seen_line_90);
    assert_int_equal(total, 3);
    perftools__profiles__profile__free_unpacked(p, NULL);
    free(gz);
    cn_calltree_run_clear(&run);
    cn_calltree_free(t);
}

static Perftools__Profiles__Profile *unpack_gzip(const char *gz, size_t len)
{
    static uint8_t raw[65536];
    z_stream z = {0};
    assert_int_equal(inflateInit2(&z, 15 + 16), Z_OK);
    z.next_in = (Bytef *)gz;
    z.avail_in = (uInt)len;
    z.next_out = raw;
    z.avail_out = sizeof raw;
    assert_int_equal(inflate(&z, Z_FINISH), Z_STREAM_END);
    size_t raw_len = sizeof raw - z.avail_out;
    inflateEnd(&z);
    Perftools__Profiles__Profile *p = perftools__profiles__profile__unpack(NULL, raw_len, raw);
    assert_non_null(p);
    return p;
}

static cn_pprof_style test_style;

static int write_pprof_styled(const cn_calltree *t, FILE *out)
{
    cn_profile_meta meta = {.task_id = "t1", .start_ms = 20000, .end_ms = 30000, .period_ms = 10};
    return cn_calltree_write_pprof_styled(t, &meta, &test_style, out);
}

/* The pyroscope exporter's styles: wall in nanoseconds, from durations or from snapshots x period. */
static void test_pprof_wall_styles(void **state)
{
    (void)state;
    cn_calltree *t = cn_calltree_new(100);
    cn_calltree_run run = {0};
    add(t, &run, 0, 100, P("a.py.main: 1", "a.py.work: 2"));
    add(t, &run, 1, 110, P("a.py.main: 1", "a.py.work: 2"));
    add(t, &run, 2, 150, P("a.py.main: 1"));
    for (int style = 0; style < 2; style++) {
        test_style = style == 0 ? (cn_pprof_style){.wall = CN_PPROF_WALL_SAMPLES_NS, .period_ns = 10000000}
                                : (cn_pprof_style){.wall = CN_PPROF_WALL_DURATION_NS};
        size_t len;
        char *gz = render_to_string(write_pprof_styled, t, &len);
        Perftools__Profiles__Profile *p = unpack_gzip(gz, len);
        /* Pyroscope files a profile with a "wall" sample type as its wall profile type. */
        assert_string_equal(p->string_table[p->sample_type[1]->type], "wall");
        assert_string_equal(p->string_table[p->sample_type[1]->unit], "nanoseconds");
        assert_string_equal(p->string_table[p->period_type->unit], "nanoseconds");
        assert_int_equal(p->period, 10 * 1000000LL);
        assert_int_equal(p->time_nanos, 20000 * 1000000LL);
        assert_int_equal(p->duration_nanos, 10000 * 1000000LL);
        int64_t count = 0, wall = 0;
        for (size_t i = 0; i < p->n_sample; i++) {
            count += p->sample[i]->value[0];
            wall += p->sample[i]->value[1];
        }
        assert_int_equal(count, 3);
        /* Sampled: 3 snapshots x 10 ms. Durations: main on the stack 100..150 ms. */
        assert_int_equal(wall, style == 0 ? 30 * 1000000LL : 50 * 1000000LL);
        perftools__profiles__profile__free_unpacked(p, NULL);
        free(gz);
    }
    cn_calltree_run_clear(&run);
    cn_calltree_free(t);
}

static int write_svg_plain(const cn_calltree *t, FILE *out)
{
    cn_profile_meta meta = {.task_id = "t<&>\"", .service = "shop", .endpoint = "/checkout", .agents = 2};
    return cn_calltree_write_svg(t, &meta, 800, out);
}

static void test_svg(void **state)
{
    (void)state;
    cn_calltree *t = cn_calltree_new(100);
    add(t, NULL, 0, 0, P("/srv/app.py.app: 130", "/srv/app.py.checkout: 86"));
    add(t, NULL, 0, 0, P("/srv/app.py.app: 130", "bad \xff\xfe <tag> & \"q\" \x01.f: 1"));
    size_t len;
    char *svg = render_to_string(write_svg_plain, t, &len);
    assert_non_null(strstr(svg, "<svg "));
    assert_non_null(strstr(svg, "</svg>\n"));
    assert_non_null(strstr(svg, "checkout (app.py:86)"));
    assert_non_null(strstr(svg, "/srv/app.py.checkout: 86"));
    assert_non_null(strstr(svg, "t&lt;&amp;&gt;&quot;"));
    assert_non_null(strstr(svg, "&lt;tag&gt; &amp; &quot;q&quot; ?"));
    assert_null(strstr(svg, "\xff"));
    assert_null(strstr(svg, "\x01"));
    /* "all" plus three frames, each a <g> with its sample offset and count. */
    size_t frames = 0;
    for (const char *p = svg; (p = strstr(p, "<g data-o=")); p++)
        frames++;
    assert_int_equal(frames, 4);
    assert_non_null(strstr(svg, "data-total=\"2\""));
    free(svg);
    /* An empty tree still draws a valid picture. */
    cn_calltree *empty = cn_calltree_new(10);
    svg = render_to_string(write_svg_plain, empty, &len);
    assert_non_null(strstr(svg, "No snapshots yet."));
    free(svg);
    cn_calltree_free(empty);
    cn_calltree_free(t);
}

static void test_clone(void **state)
{
    (void)state;
    cn_calltree *t = cn_calltree_new(100);
    add(t, NULL, 0, 0, P("a", "b"));
    cn_calltree *c = cn_calltree_clone(t);
    assert_non_null(c);
    add(t, NULL, 0, 0, P("a", "c"));
    assert_int_equal(cn_calltree_node_count(c), 2);
    assert_int_equal(cn_calltree_samples(c), 1);
    assert_int_equal(find(c, P("a", "b"))->count, 1);
    /* A clone is read only. */
    assert_int_equal(cn_calltree_intern(c, "z"), CN_CALLTREE_NONE);
    cn_calltree_free(c);
    cn_calltree_free(t);
}

/* A signature interned by its key (a batch's string_keys) is the one interned by its text. */
static void test_intern_by_key(void **state)
{
    (void)state;
    cn_calltree *t = cn_calltree_new(100);
    assert_non_null(t);
    const char *a = "app.py.main: 1", *b = "app.py.handle: 20";
    uint32_t ia = cn_calltree_intern(t, a);
    assert_int_equal(cn_calltree_intern_key(t, cn_string_key(a, strlen(a)), a), ia);
    uint32_t ib = cn_calltree_intern_key(t, cn_string_key(b, strlen(b)), b);
    assert_int_not_equal(ib, ia);
    assert_int_equal(cn_calltree_intern(t, b), ib);
    assert_string_equal(cn_calltree_sig(t, ib), b);
    assert_int_equal(cn_calltree_sig_count(t), 2);
    cn_calltree_free(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_counts_and_durations),
        cmocka_unit_test(test_intern_by_key),
        cmocka_unit_test(test_same_signature_other_parent),
        cmocka_unit_test(test_node_limit),
        cmocka_unit_test(test_presized_grows),
        cmocka_unit_test(test_signature_parse),
        cmocka_unit_test(test_folded),
        cmocka_unit_test(test_pprof),
        cmocka_unit_test(test_pprof_wall_styles),
        cmocka_unit_test(test_svg),
        cmocka_unit_test(test_clone),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
