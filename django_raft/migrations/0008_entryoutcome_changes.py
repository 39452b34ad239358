from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("django_raft", "0007_node_identity"),
    ]

    operations = [
        migrations.AddField(
            model_name="entryoutcome",
            name="changes",
            field=models.TextField(
                blank=True,
                default="",
                help_text='The rows the command changed, for watches: a JSON list of ["app_label.'
                'model", "pk"] pairs; empty when none was seen.',
                verbose_name="rows changed",
            ),
        ),
        migrations.AddField(
            model_name="entryoutcome",
            name="ran",
            field=models.BooleanField(
                default=True,
                help_text="False when the command's session answered it without running it (a "
                "retry of a command already applied) or refused it.",
                verbose_name="ran",
            ),
        ),
    ]
