tenant_urlpatterns = []
public_urlpatterns = []
urlpatterns = []
