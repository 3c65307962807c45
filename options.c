/* options.c: the command-line parser of every command (GNU style: --name value, --name=value,
 * -n value, -n5, "--" ends the options) and the --help text it makes from a command's table. */
#include "mamba.h"

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

static void unknown(const OptionParser *p, const char *a) {
    die("%s: unknown option %s (see mamba %s --help)", p->cmd->command, a, p->cmd->command);
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
            if (fflush(stdout)) exit(1);
            exit(0);
        }
        const Option *o;
        const char *attached = NULL;
        p->name = a;
        if (a[1] == '-') {                                  /* --name or --name=value */
            const char *eq = strchr(a, '=');
            size_t len = eq ? (size_t)(eq - a) : strlen(a);
            if (!(o = find_option(p->cmd, a, len))) {
                if (eq) die("%s: unknown option %.*s (see mamba %s --help)", p->cmd->command, (int)len, a, p->cmd->command);
                unknown(p, a);
            }
            if (eq) {
                snprintf(p->spelling, sizeof p->spelling, "%.*s", (int)len, a);
                p->name = p->spelling;
                attached = eq + 1;
            }
        } else if (!(o = find_option(p->cmd, a, strlen(a)))) { /* -n5: a short option and its value */
            o = find_option(p->cmd, a, 2);
            if (!o || !o->value) unknown(p, a);
            snprintf(p->spelling, sizeof p->spelling, "%.2s", a);
            p->name = p->spelling;
            attached = a + 2;
        }
        *value = take_value(p, o, attached);
        return o->id;
    }
    return OPT_END;
}

void print_usage(const Command *cmd, FILE *f) {
    fprintf(f, "usage: %s\n\n%s\n", cmd->synopsis, cmd->about);
    if (cmd->options[0].names) fputs("\noptions:\n", f);
    for (const Option *o = cmd->options; o->names; o++) {
        char left[128];
        int n = snprintf(left, sizeof left, "  ");
        for (const char *p = o->names; *p;) {
            size_t len = strcspn(p, "|");
            n += snprintf(left + n, sizeof left - n, "%s%.*s", p == o->names ? "" : ", ", (int)len, p);
            p += len + (p[len] == '|');
        }
        if (o->value) snprintf(left + n, sizeof left - n, " %s", o->value);
        if (strlen(left) <= 28) fprintf(f, "%-30s%s\n", left, o->help);
        else fprintf(f, "%s\n%30s%s\n", left, "", o->help);
    }
    fputs("\nThe model is -m FILE, else $MAMBA_MODEL, else weights/model.bin beside the binary.\n", f);
}

int positional_model(const char **model_path, int n_positional, const char *arg) {
    if (n_positional || *model_path || !is_checkpoint(arg)) return 0;
    *model_path = arg;
    return 1;
}
