/*
 * Flame graph renderer: a self-contained SVG (no external script, style or
 * font) laid out here in C. The root is at the bottom; siblings are sorted
 * by name, as flamegraph.pl does, so the same profile always draws the same.
 *
 * Each frame is a <g> carrying its exact position in samples (data-o offset,
 * data-n count, data-l level), so the embedded script can zoom with integer
 * arithmetic: click a frame to zoom, hover for details, "Search" (or Ctrl-F)
 * to highlight frames matching a regular expression.
 */
#include <stdlib.h>
#include <string.h>

#include "profiles/calltree.h"

#define FRAME_H 16
#define FONT_SIZE 12
#define FONT_WIDTH 0.59
#define XPAD 10
#define TOP_PAD (FRAME_H * 3 + 8)
#define BOTTOM_PAD (FRAME_H * 2 + 6)
#define MIN_WIDTH_PX 0.1

typedef struct svg_item {
    uint32_t node;  /* CN_CALLTREE_NONE: the "all" frame */
    uint32_t level; /* 0 for "all" */
    int64_t offset; /* in samples from the left edge */
} svg_item;

/*
 * Writes s (len bytes) as XML text: markup characters escaped, control
 * characters and bytes that are not valid UTF-8 replaced, so the document is
 * always well-formed whatever an agent sent.
 */
static void put_xml(FILE *out, const char *s, size_t len)
{
    const unsigned char *p = (const unsigned char *)s, *end = p + len;
    while (p < end) {
        unsigned char c = *p;
        if (c < 0x80) {
            switch (c) {
            case '&': fputs("&amp;", out); break;
            case '<': fputs("&lt;", out); break;
            case '>': fputs("&gt;", out); break;
            case '"': fputs("&quot;", out); break;
            case '\'': fputs("&#39;", out); break;
            default: putc(c < 0x20 || c == 0x7f ? '?' : c, out);
            }
            p++;
            continue;
        }
        size_t n = c >= 0xf0 && c <= 0xf4 ? 4 : c >= 0xe0 ? 3 : c >= 0xc2 && c <= 0xdf ? 2 : 0;
        bool ok = n > 0 && (size_t)(end - p) >= n;
        for (size_t i = 1; ok && i < n; i++)
            ok = (p[i] & 0xc0) == 0x80;
        if (ok && n == 3) /* no overlong forms, no UTF-16 surrogates */
            ok = !(c == 0xe0 && p[1] < 0xa0) && !(c == 0xed && p[1] >= 0xa0);
        if (ok && n == 4)
            ok = !(c == 0xf0 && p[1] < 0x90) && !(c == 0xf4 && p[1] >= 0x90);
        if (!ok) {
            fputs("\xef\xbf\xbd", out); /* U+FFFD */
            p++;
            continue;
        }
        fwrite(p, 1, n, out);
        p += n;
    }
}

static void put_xml_str(FILE *out, const char *s) { put_xml(out, s, strlen(s)); }

static uint32_t hash_bytes(const char *s, size_t len)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < len; i++) {
        h ^= (unsigned char)s[i];
        h *= 16777619u;
    }
    return h;
}

/* Library code (the interpreter's and installed packages) is drawn in cool colours, the app's in warm ones. */
static bool is_library(const char *file, size_t len)
{
    static const char *const marks[] = {"/dist-packages/", "/site-packages/", "/lib/python", "<frozen"};
    for (size_t m = 0; m < sizeof marks / sizeof marks[0]; m++) {
        size_t ml = strlen(marks[m]);
        for (size_t i = 0; i + ml <= len; i++)
            if (memcmp(file + i, marks[m], ml) == 0)
                return true;
    }
    return false;
}

/* "function (file.py:42)": what fits on a frame; the full signature is in the tooltip. */
static void frame_label(const char *sig, char *buf, size_t len, int *r, int *g, int *b)
{
    const char *file, *func;
    size_t file_len, func_len;
    int64_t line;
    bool parsed = cn_signature_parse(sig, &file, &file_len, &func, &func_len, &line);
    uint32_t h = hash_bytes(func, func_len);
    double v1 = (h & 0xff) / 255.0, v2 = ((h >> 8) & 0xff) / 255.0, v3 = ((h >> 16) & 0xff) / 255.0;
    if (strcmp(sig, CN_CALLTREE_TRUNCATED) == 0 || strcmp(sig, CN_CALLTREE_EMPTY) == 0) {
        *r = *g = *b = 170;
    } else if (parsed && is_library(file, file_len)) {
        *r = 50 + (int)(60 * v3);
        *g = 165 + (int)(55 * v3);
        *b = 165 + (int)(55 * v1);
    } else {
        *r = 205 + (int)(50 * v3);
        *g = (int)(230 * v1);
        *b = (int)(55 * v2);
    }
    if (!parsed) {
        snprintf(buf, len, "%s", sig);
        return;
    }
    const char *base = file;
    for (size_t i = 0; i < file_len; i++)
        if (file[i] == '/')
            base = file + i + 1;
    snprintf(buf, len, "%.*s (%.*s:%lld)", (int)func_len, func, (int)(file + file_len - base), base, (long long)line);
}

/* The label cut to what fits in w pixels, as the script does on zoom. */
static size_t fit_chars(double w, size_t len)
{
    double max = (w - 6) / (FONT_SIZE * FONT_WIDTH);
    if (max < 3)
        return 0;
    return len <= (size_t)max ? len : (size_t)max;
}

/* qsort_r (glibc's argument order; the build defines _GNU_SOURCE) keeps the tree out of globals. */
static int cmp_by_sig(const void *a, const void *b, void *arg)
{
    const cn_calltree *t = arg;
    const cn_calltree_node *nodes = cn_calltree_nodes(t);
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return strcmp(cn_calltree_sig(t, nodes[x].sig), cn_calltree_sig(t, nodes[y].sig));
}

/* Children of node (roots when CN_CALLTREE_NONE), sorted by signature, into *out. Returns count or -1. */
static long sorted_children(const cn_calltree *t, uint32_t node, uint32_t **out, size_t *cap)
{
    const cn_calltree_node *nodes = cn_calltree_nodes(t);
    uint32_t first = node == CN_CALLTREE_NONE ? cn_calltree_first_root(t) : nodes[node].first_child;
    size_t k = 0;
    for (uint32_t c = first; c != CN_CALLTREE_NONE; c = nodes[c].next_sibling) {
        if (k == *cap) {
            size_t ncap = *cap ? *cap * 2 : 64;
            uint32_t *grown = realloc(*out, ncap * sizeof *grown);
            if (!grown)
                return -1;
            *out = grown;
            *cap = ncap;
        }
        (*out)[k++] = c;
    }
    qsort_r(*out, k, sizeof **out, cmp_by_sig, (void *)t);
    return (long)k;
}

/* Lays out the frames wider than MIN_WIDTH_PX: items in drawing order (parents first). */
static long layout(const cn_calltree *t, double px_per_sample, svg_item **items_out,
                   uint32_t *max_level)
{
    const cn_calltree_node *nodes = cn_calltree_nodes(t);
    size_t n = cn_calltree_node_count(t);
    svg_item *items = malloc((n + 1) * sizeof *items);
    svg_item *stack = malloc((n + 1) * sizeof *stack);
    uint32_t *kids = NULL;
    size_t kids_cap = 0, n_items = 0, sp = 0;
    long rc = -1;
    if (!items || !stack)
        goto out;
    *max_level = 0;
    stack[sp++] = (svg_item){CN_CALLTREE_NONE, 0, 0};
    while (sp > 0) {
        svg_item it = stack[--sp];
        items[n_items++] = it;
        if (it.level > *max_level)
            *max_level = it.level;
        long k = sorted_children(t, it.node, &kids, &kids_cap);
        if (k < 0)
            goto out;
        int64_t off = it.offset;
        /* Pushed in reverse so they pop left to right; only parents' order matters for drawing. */
        int64_t *offs = malloc((size_t)(k ? k : 1) * sizeof *offs);
        if (!offs)
            goto out;
        for (long i = 0; i < k; i++) {
            offs[i] = off;
            off += nodes[kids[i]].count;
        }
        for (long i = k - 1; i >= 0; i--) {
            if ((double)nodes[kids[i]].count * px_per_sample < MIN_WIDTH_PX)
                continue;
            stack[sp++] = (svg_item){kids[i], it.level + 1, offs[i]};
        }
        free(offs);
    }
    *items_out = items;
    items = NULL;
    rc = (long)n_items;
out:
    free(items);
    free(stack);
    free(kids);
    return rc;
}

static const char svg_script[] =
    "var W,XPAD,TOTAL,FONT=12,FW=0.59,frames=[],details,matched,unzoombtn,searchbtn,zoomed=null,searching=null;\n"
    "function init(evt){var svg=document.documentElement;W=+svg.getAttribute('data-width');\n"
    " XPAD=+svg.getAttribute('data-xpad');TOTAL=+svg.getAttribute('data-total');\n"
    " details=document.getElementById('details').firstChild;matched=document.getElementById('matched');\n"
    " unzoombtn=document.getElementById('unzoom');searchbtn=document.getElementById('search');\n"
    " var gs=document.getElementById('frames').getElementsByTagName('g');\n"
    " for(var i=0;i<gs.length;i++){var g=gs[i],r=g.getElementsByTagName('rect')[0];\n"
    "  var info=g.getElementsByTagName('title')[0].textContent;\n"
    "  var f={g:g,r:r,t:g.getElementsByTagName('text')[0],o:+g.getAttribute('data-o'),n:+g.getAttribute('data-n'),\n"
    "   l:+g.getAttribute('data-l'),label:g.getAttribute('data-label'),fill:r.getAttribute('fill'),\n"
    "   name:info.split('\\n')[0],info:info.replace(/\\n/g,' ')};\n"
    "  frames.push(f);g.addEventListener('mouseover',hover.bind(null,f));\n"
    "  g.addEventListener('mouseout',function(){details.nodeValue=' ';});\n"
    "  g.addEventListener('click',zoom.bind(null,f));}\n"
    " unzoombtn.addEventListener('click',unzoom);searchbtn.addEventListener('click',searchPrompt);\n"
    " window.addEventListener('keydown',function(e){if(e.keyCode===114||((e.ctrlKey||e.metaKey)&&e.keyCode===70)){\n"
    "  e.preventDefault();searchPrompt();}});}\n"
    "function hover(f){details.nodeValue=f.info;}\n"
    "function fit(f,w){var max=Math.floor((w-6)/(FONT*FW));if(max<3){f.t.textContent='';return;}\n"
    " f.t.textContent=f.label.length<=max?f.label:f.label.substring(0,max-2)+'..';}\n"
    "function place(f,x,w){f.r.setAttribute('x',x.toFixed(2));f.r.setAttribute('width',w.toFixed(2));\n"
    " f.t.setAttribute('x',(x+3).toFixed(2));fit(f,w);}\n"
    "function show(f,on){f.g.style.display=on?'':'none';}\n"
    "function zoom(z){var span=W-2*XPAD;zoomed=z;\n"
    " for(var i=0;i<frames.length;i++){var f=frames[i];\n"
    "  if(f.l<z.l){var anc=f.o<=z.o&&f.o+f.n>=z.o+z.n;show(f,anc);if(anc){place(f,XPAD,span);f.g.classList.add('parent');}}\n"
    "  else if(f.o>=z.o&&f.o+f.n<=z.o+z.n){show(f,true);f.g.classList.remove('parent');\n"
    "   place(f,XPAD+(f.o-z.o)*span/z.n,f.n*span/z.n);}\n"
    "  else show(f,false);}\n"
    " unzoombtn.classList.remove('hide');}\n"
    "function unzoom(){var span=W-2*XPAD;zoomed=null;\n"
    " for(var i=0;i<frames.length;i++){var f=frames[i];show(f,true);f.g.classList.remove('parent');\n"
    "  place(f,XPAD+f.o*span/TOTAL,f.n*span/TOTAL);}\n"
    " unzoombtn.classList.add('hide');}\n"
    "function searchPrompt(){if(searching){search(null);return;}\n"
    " var term=prompt('Search frames (regular expression):','');if(term)search(term);}\n"
    "function search(term){var re=null;if(term){try{re=new RegExp(term);}catch(e){alert('Bad expression: '+e.message);return;}}\n"
    " searching=re;var ranges=[];\n"
    " for(var i=0;i<frames.length;i++){var f=frames[i];\n"
    "  if(re&&f.l>0&&re.test(f.name)){f.r.setAttribute('fill','rgb(230,0,230)');ranges.push([f.o,f.o+f.n]);}\n"
    "  else f.r.setAttribute('fill',f.fill);}\n"
    " if(!re){matched.textContent=' ';searchbtn.textContent='Search';return;}\n"
    " ranges.sort(function(a,b){return a[0]-b[0];});var sum=0,end=-1;\n"
    " for(var j=0;j<ranges.length;j++){var a=Math.max(ranges[j][0],end),b=ranges[j][1];if(b>a){sum+=b-a;end=b;}}\n"
    " matched.textContent='Matched: '+(TOTAL?(100*sum/TOTAL).toFixed(1):'0')+'%';searchbtn.textContent='Reset search';}\n";

int cn_calltree_write_svg(const cn_calltree *t, const cn_profile_meta *meta, int width, FILE *out)
{
    if (width <= 0)
        width = 1200;
    if (width < 200)
        width = 200;
    const cn_calltree_node *nodes = cn_calltree_nodes(t);
    int64_t total = 0;
    for (uint32_t r = cn_calltree_first_root(t); r != CN_CALLTREE_NONE; r = nodes[r].next_sibling)
        total += nodes[r].count;
    double span = width - 2 * XPAD;
    double px = total > 0 ? span / (double)total : 0;
    svg_item *items = NULL;
    uint32_t max_level = 0;
    long n_items = 0;
    if (total > 0 && (n_items = layout(t, px, &items, &max_level)) < 0)
        return -1;
    int height = TOP_PAD + (int)(max_level + 1) * FRAME_H + BOTTOM_PAD;
    if (total == 0)
        height = TOP_PAD + FRAME_H * 2 + BOTTOM_PAD;

    fprintf(out,
            "<?xml version=\"1.0\" encoding=\"UTF-8\" standalone=\"no\"?>\n"
            "<svg version=\"1.1\" xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" "
            "viewBox=\"0 0 %d %d\" onload=\"init(evt)\" data-width=\"%d\" data-xpad=\"%d\" data-total=\"%lld\">\n",
            width, height, width, height, width, XPAD, (long long)total);
    fputs("<style type=\"text/css\"><![CDATA[\n"
          "text{font-family:Verdana,sans-serif;font-size:12px;fill:#000}\n"
          "#title{font-size:17px;text-anchor:middle}#subtitle{fill:#555;text-anchor:middle}\n"
          "#frames g{cursor:pointer}#frames g:hover rect{stroke:#000;stroke-width:0.5}\n"
          "#frames text{pointer-events:none;font-size:11px}.parent{opacity:0.5}.hide{display:none}\n"
          ".button{cursor:pointer;fill:#36c}.button:hover{text-decoration:underline}\n"
          "]]></style>\n<script type=\"text/ecmascript\"><![CDATA[\n",
          out);
    fputs(svg_script, out);
    fputs("]]></script>\n", out);
    fprintf(out,
            "<rect x=\"0\" y=\"0\" width=\"%d\" height=\"%d\" fill=\"#f8f8f2\"/>\n"
            "<text id=\"title\" x=\"%d\" y=\"22\">Flame graph",
            width, height, width / 2);
    if (meta && meta->task_id) {
        fputs(": ", out);
        put_xml_str(out, meta->task_id);
    }
    fprintf(out, "</text>\n<text id=\"subtitle\" x=\"%d\" y=\"40\">", width / 2);
    if (meta && meta->service) {
        fputs("service ", out);
        put_xml_str(out, meta->service);
        fputs(" \xc2\xb7 ", out);
    }
    if (meta && meta->endpoint) {
        fputs("endpoint ", out);
        put_xml_str(out, meta->endpoint);
        fputs(" \xc2\xb7 ", out);
    }
    fprintf(out, "%lld snapshots", (long long)cn_calltree_samples(t));
    if (meta && meta->agents >= 0)
        fprintf(out, " \xc2\xb7 %lld agents", (long long)meta->agents);
    fprintf(out, "</text>\n<text id=\"unzoom\" class=\"button hide\" x=\"%d\" y=\"22\">Reset zoom</text>\n"
                 "<text id=\"search\" class=\"button\" x=\"%d\" y=\"22\" text-anchor=\"end\">Search</text>\n"
                 "<text id=\"matched\" x=\"%d\" y=\"%d\" text-anchor=\"end\"> </text>\n"
                 "<text id=\"details\" x=\"%d\" y=\"%d\"> </text>\n",
            XPAD, width - XPAD, width - XPAD, height - 10, XPAD, height - 10);
    if (total == 0)
        fprintf(out, "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\">No snapshots yet.</text>\n", width / 2,
                TOP_PAD + FRAME_H);
    fputs("<g id=\"frames\">\n", out);
    char label[512];
    for (long i = 0; i < n_items; i++) {
        const svg_item *it = &items[i];
        int64_t count = it->node == CN_CALLTREE_NONE ? total : nodes[it->node].count;
        const char *sig = it->node == CN_CALLTREE_NONE ? "all" : cn_calltree_sig(t, nodes[it->node].sig);
        int r = 200, g = 200, b = 200;
        if (it->node == CN_CALLTREE_NONE)
            snprintf(label, sizeof label, "all");
        else
            frame_label(sig, label, sizeof label, &r, &g, &b);
        double x = XPAD + (double)it->offset * px, w = (double)count * px;
        int y = TOP_PAD + (int)(max_level - it->level) * FRAME_H;
        fprintf(out, "<g data-o=\"%lld\" data-n=\"%lld\" data-l=\"%u\" data-label=\"", (long long)it->offset,
                (long long)count, it->level);
        put_xml_str(out, label);
        fputs("\"><title>", out);
        put_xml_str(out, sig);
        fprintf(out, "\n(%lld samples, %.2f%%", (long long)count, 100.0 * (double)count / (double)total);
        if (it->node != CN_CALLTREE_NONE)
            fprintf(out, "; self %lld; duration %lld ms", (long long)nodes[it->node].self,
                    (long long)nodes[it->node].duration_ms);
        fprintf(out,
                ")</title><rect x=\"%.2f\" y=\"%d\" width=\"%.2f\" height=\"%d\" fill=\"rgb(%d,%d,%d)\" rx=\"2\" "
                "ry=\"2\"/><text x=\"%.2f\" y=\"%.1f\">",
                x, y, w, FRAME_H - 1, r, g, b, x + 3, y + 11.5);
        size_t len = strlen(label), fit = fit_chars(w, len);
        if (fit == len) {
            put_xml(out, label, len);
        } else if (fit > 0) {
            /* Cut on a character boundary, never inside a UTF-8 sequence. */
            size_t cut = fit - 2;
            while (cut > 0 && ((unsigned char)label[cut] & 0xc0) == 0x80)
                cut--;
            put_xml(out, label, cut);
            fputs("..", out);
        }
        fputs("</text></g>\n", out);
    }
    fputs("</g>\n</svg>\n", out);
    free(items);
    return ferror(out) ? -1 : 0;
}
