/* anvil_server_create refuses an empty API or admin key: "" must never turn
 * authentication off unnoticed (a key a script failed to fill in). The CLI's
 * own refusal is tests/python/test_server_net.py's. */
#include <stddef.h>

#include "anvil/server.h"
#include "testutil.h"

static void test_empty_api_key_is_refused(void **state)
{
    (void)state;
    anvil_server_options o;
    anvil_server_options_default(&o);
    o.api_key = "";
    anvil_server *s = (anvil_server *)&o; /* must be set to NULL */
    assert_status_msg(anvil_server_create(&o, &s), ANVIL_ERR_INVALID_ARG, "API key is empty");
    assert_null(s);
}

static void test_empty_admin_key_is_refused(void **state)
{
    (void)state;
    anvil_server_options o;
    anvil_server_options_default(&o);
    o.api_key = "sk-x";
    o.admin_key = "";
    anvil_server *s = (anvil_server *)&o;
    assert_status_msg(anvil_server_create(&o, &s), ANVIL_ERR_INVALID_ARG, "admin key is empty");
    assert_null(s);
}

/* NULL keys (no authentication) and real keys still create a server. */
static void test_keys_or_none_are_fine(void **state)
{
    (void)state;
    anvil_server_options o;
    anvil_server_options_default(&o);
    anvil_server *s = NULL;
    assert_int_equal(anvil_server_create(&o, &s), ANVIL_OK);
    assert_non_null(s);
    anvil_server_free(s);
    o.api_key = "sk-x";
    o.admin_key = "sk-admin";
    s = NULL;
    assert_int_equal(anvil_server_create(&o, &s), ANVIL_OK);
    assert_non_null(s);
    anvil_server_free(s);
    s = NULL;
    assert_int_equal(anvil_server_create(NULL, &s), ANVIL_OK); /* the defaults */
    anvil_server_free(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_empty_api_key_is_refused),
        cmocka_unit_test(test_empty_admin_key_is_refused),
        cmocka_unit_test(test_keys_or_none_are_fine),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
