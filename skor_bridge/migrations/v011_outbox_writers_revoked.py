"""Writers lose every privilege on the bridge's tables.

Up to 0.1 the capture functions ran with the writer's privileges, so `triggers install
--grant ROLE` granted INSERT on skor.outbox, and such a role could insert forged events for
any table directly. The capture functions are now SECURITY DEFINER (owned by the installing
role), so writers need nothing: every grant on skor's tables to a role other than the
table's owner is revoked. USAGE on the schema alone lets nobody read or write anything.
"""

SQL = """
DO $skor$
DECLARE
    grant_row record;
BEGIN
    FOR grant_row IN
        SELECT DISTINCT c.oid::regclass AS tbl,
               CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(r.rolname) END AS grantee
        FROM pg_class c
        JOIN pg_namespace n ON n.oid = c.relnamespace
        CROSS JOIN LATERAL aclexplode(c.relacl) AS a
        LEFT JOIN pg_roles r ON r.oid = a.grantee
        WHERE n.nspname = 'skor' AND c.relkind IN ('r', 'p') AND a.grantee <> c.relowner
    LOOP
        EXECUTE format('REVOKE ALL ON %s FROM %s', grant_row.tbl, grant_row.grantee);
    END LOOP;
END
$skor$;
"""
