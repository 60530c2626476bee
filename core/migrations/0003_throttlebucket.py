# Rate-limit buckets (core/api/throttles.py), one row per throttled key.

from django.db import migrations, models

# The table is written on nearly every API request, so it is made as cheap as it can be:
# - UNLOGGED: its writes skip the WAL, so a request's upsert commits without waiting for a
#   WAL flush. A bucket is disposable: after a crash PostgreSQL empties the table and a
#   standby never has it, which at worst forgives the requests counted so far. Nothing
#   else refers to it.
# - no "_like" pattern index that Django adds to a text primary key, and no index on tat:
#   the primary key is the only index, so updating tat stays a HOT update in the page
#   (fillfactor leaves the room for it), and pruning scans a table that stays small.
CREATE = """
CREATE UNLOGGED TABLE core_throttlebucket (
    key text PRIMARY KEY,
    tat timestamptz NOT NULL
) WITH (fillfactor = 70)
"""


class Migration(migrations.Migration):
    dependencies = [
        ("core", "0002_verbose_names"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[migrations.RunSQL(CREATE, reverse_sql="DROP TABLE core_throttlebucket")],
            state_operations=[
                migrations.CreateModel(
                    name="ThrottleBucket",
                    fields=[
                        ("key", models.TextField(primary_key=True, serialize=False)),
                        ("tat", models.DateTimeField()),
                    ],
                    options={
                        "verbose_name": "throttle bucket",
                        "verbose_name_plural": "throttle buckets",
                    },
                ),
            ],
        ),
    ]
