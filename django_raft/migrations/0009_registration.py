from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('django_raft', '0008_entryoutcome_changes'),
    ]

    operations = [
        migrations.CreateModel(
            name='Registration',
            fields=[
                ('key', models.CharField(max_length=200, primary_key=True, serialize=False, verbose_name='key')),
                ('value', models.TextField(default='null', verbose_name='value (JSON)')),
                ('holder', models.CharField(max_length=64, verbose_name="holder's client id")),
                ('ttl_ms', models.PositiveBigIntegerField(verbose_name='time to live (ms)')),
                ('expires_ms', models.PositiveBigIntegerField(verbose_name='expires (log time, ms)')),
                ('token', models.PositiveBigIntegerField(verbose_name='token')),
            ],
            options={
                'verbose_name': 'registration',
                'indexes': [models.Index(fields=['expires_ms'], name='django_raft_registration_exp')],
            },
        ),
    ]
