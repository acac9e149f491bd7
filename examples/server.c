/*
 * server: an OpenAI-compatible server inside a program, asked one question.
 *
 *     cc server.c -o server $(pkg-config --cflags --libs anvil)
 *     ./server MODEL_DIR
 *
 * Serves the model under the name "demo" on 127.0.0.1 (a port the system
 * picks), sends it one POST /v1/completions over a plain socket, prints the
 * response, and shuts the server down.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <anvil/anvil.h>

/* Sends one HTTP/1.0 request and prints the whole response. */
static int ask(int port, const char *body)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        close(fd);
        return -1;
    }
    char head[256];
    int n = snprintf(head, sizeof head,
                     "POST /v1/completions HTTP/1.0\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                     "Content-Length: %zu\r\n\r\n",
                     strlen(body));
    if (write(fd, head, (size_t)n) != n || write(fd, body, strlen(body)) != (ssize_t)strlen(body)) {
        close(fd);
        return -1;
    }
    char buf[4096];
    ssize_t got;
    while ((got = read(fd, buf, sizeof buf)) > 0)
        fwrite(buf, 1, (size_t)got, stdout);
    printf("\n");
    close(fd);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: server MODEL_DIR\n");
        return 2;
    }
    const char *model = argv[1];

    anvil_server_options so;
    anvil_server_options_default(&so);
    so.port = 0; /* any free port: anvil_server_port says which */
    anvil_server *s = NULL;
    anvil_runtime *rt = NULL;
    anvil_tokenizer *tok = NULL;
    anvil_executor *ex = NULL;
    if (anvil_server_create(&so, &s) != ANVIL_OK || anvil_runtime_load(model, NULL, &rt) != ANVIL_OK ||
        anvil_tokenizer_load(model, &tok) != ANVIL_OK || anvil_executor_create(rt, tok, NULL, &ex) != ANVIL_OK) {
        fprintf(stderr, "server: %s\n", anvil_last_error());
        anvil_executor_free(ex);
        anvil_tokenizer_free(tok);
        anvil_runtime_free(rt);
        anvil_server_free(s);
        return 1;
    }
    /* the server takes rt, tok and ex, even when this fails */
    if (anvil_server_add_model(s, "demo", model, NULL, rt, tok, ex) != ANVIL_OK || anvil_server_start(s) != ANVIL_OK) {
        fprintf(stderr, "server: %s\n", anvil_last_error());
        anvil_server_free(s);
        return 1;
    }
    int port = anvil_server_port(s);
    fprintf(stderr, "server: listening on 127.0.0.1:%d\n", port);

    int rc = ask(port, "{\"model\": \"demo\", \"prompt\": \"Once upon a time\", \"max_tokens\": 16, "
                       "\"temperature\": 0}");
    if (rc != 0)
        perror("server: the request");
    anvil_server_shutdown(s, 5.0);
    anvil_server_free(s);
    return rc == 0 ? 0 : 1;
}
