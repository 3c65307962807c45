/* options.c: the command-line parser of every command (GNU style: --name value, --name=value,
 * -n value, -n5, "--" ends the options) and the --help text it makes from a command's table. */
#include "mamba.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* Whether the '|'-separated spellings in names include name[0..len). */
static int has_name(const char *names, const char *name, size_t len) {
    for (const char *p = names; *p;) {
        size_t n = strcspn(p, "|");
        if (n == len && !memcmp(p, name, len)) return 1;
        p += n + (p[n] == '|');
    }
    return 0;
}

static const Option *find_option(const Command *cmd, const char *name, size_t len) {
    for (const Option *o = cmd->options; o->names; o++)
        if (has_name(o->names, name, len)) return o;
    return NULL;
}

void options_begin(OptionParser *p, const Command *cmd, int argc, char **argv) {
    *p = (OptionParser){.cmd = cmd, .argc = argc, .argv = argv};
}

/* The option's value: the text after '=' or the attached short value, else the next argument. */
static const char *take_value(OptionParser *p, const Option *o, const char *attached) {
    if (!o->value) {
        if (attached) die("%s takes no value", p->name);
        return NULL;
    }
    if (attached) return attached;
    if (p->i >= p->argc) die("%s needs a value (%s)", p->name, o->value);
    return p->argv[p->i++];
}

/* Whether "-" + a[0..len) is an option: "-steps" is most likely "--steps", not -s "teps". */
static const Option *with_one_more_dash(const Command *cmd, const char *a, size_t len) {
    char dashed[64];
    if (a[1] == '-' || len + 2 > sizeof dashed) return NULL;
    snprintf(dashed, sizeof dashed, "-%.*s", (int)len, a);
    return find_option(cmd, dashed, len + 1);
}

/* An unknown option: the first len bytes of a. */
__attribute__((noreturn)) static void die_unknown_option(const OptionParser *p, const char *a, size_t len) {
    if (with_one_more_dash(p->cmd, a, len))
        die("%s: unknown option %.*s (did you mean -%.*s?)", p->cmd->command, (int)len, a, (int)len, a);
    die("%s: unknown option %.*s (see mamba %s --help)", p->cmd->command, (int)len, a, p->cmd->command);
}

static void print_and_exit(void) {
    if (fflush(stdout) && errno != EPIPE) die("cannot write to stdout: %s", strerror(errno));
    exit(0);
}

void print_version(void) {
#ifdef MAMBA_CUDA
    printf("mamba %s (CUDA build)\n", MAMBA_VERSION);
#else
    printf("mamba %s (CPU-only build)\n", MAMBA_VERSION);
#endif
}

int options_next(OptionParser *p, const char **value) {
    while (p->i < p->argc) {
        const char *a = p->argv[p->i++];
        if (p->only_positional || a[0] != '-' || !a[1]) {
            *value = a;
            return OPT_POSITIONAL;
        }
        if (!strcmp(a, "--")) {
            p->only_positional = 1;
            continue;
        }
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            print_usage(p->cmd, stdout);
            print_and_exit();
        }
        if (!strcmp(a, "-V") || !strcmp(a, "--version")) {
            print_version();
            print_and_exit();
        }
        const Option *o;
        const char *attached = NULL;
        p->name = a;
        if (a[1] == '-') {                                  /* --name or --name=value */
            const char *eq = strchr(a, '=');
            size_t len = eq ? (size_t)(eq - a) : strlen(a);
            if (!(o = find_option(p->cmd, a, len))) die_unknown_option(p, a, len);
            if (eq) {
                snprintf(p->spelling, sizeof p->spelling, "%.*s", (int)len, a);
                p->name = p->spelling;
                attached = eq + 1;
            }
        } else if (!(o = find_option(p->cmd, a, strlen(a)))) { /* -n5: a short option and its value */
            o = find_option(p->cmd, a, 2);
            if (!o || !o->value || with_one_more_dash(p->cmd, a, strlen(a))) die_unknown_option(p, a, strlen(a));
            snprintf(p->spelling, sizeof p->spelling, "%.2s", a);
            p->name = p->spelling;
            attached = a + 2;
        }
        *value = take_value(p, o, attached);
        return o->id;
    }
    return OPT_END;
}

/* "  -n, --steps, --n-predict N": an option's spellings and its value's name. */
static void option_spellings(const Option *o, char *out, size_t size) {
    size_t n = snprintf(out, size, "  ");
    for (const char *p = o->names; *p && n < size;) {
        size_t len = strcspn(p, "|");
        n += snprintf(out + n, size - n, "%s%.*s", p == o->names ? "" : ", ", (int)len, p);
        p += len + (p[len] == '|');
    }
    if (o->value && n < size) snprintf(out + n, size - n, " %s", o->value);
}

void print_usage(const Command *cmd, FILE *f) {
    fprintf(f, "usage: %s\n\n%s\n", cmd->synopsis, cmd->about);
    if (cmd->options[0].names) fputs("\noptions:\n", f);
    for (const Option *o = cmd->options; o->names; o++) {
        char left[160];
        option_spellings(o, left, sizeof left);
        if (strlen(left) <= 28) fprintf(f, "%-30s%s\n", left, o->help);
        else fprintf(f, "%s\n%30s%s\n", left, "", o->help);
    }
    if (cmd->reads_model)
        fputs("\nThe model is -m FILE (or a checkpoint given first), else $MAMBA_MODEL, else weights/model.bin\n"
              "beside the binary.\n", f);
}

static int ends_with(const char *s, const char *tail) {
    size_t n = strlen(s), k = strlen(tail);
    return n >= k && !strcmp(s + n - k, tail);
}

int positional_model(const char **model_path, int n_positional, const char *arg) {
    if (n_positional || !(is_checkpoint(arg) || ends_with(arg, ".bin"))) return 0;
    if (*model_path) die("two models: -m %s and %s", *model_path, arg);
    *model_path = arg;   /* a .bin that is not a checkpoint: model_load says why */
    return 1;
}
